"""Issue 19: how far one training step of hpe_bench is from the authors' update, one number per fix.

Measures whichever ``hpe_bench`` Python imports, so the same script gives the numbers before and after a change
(docs/reproducing.md, "The authors' update"):

    OMP_NUM_THREADS=1 python benchmarks/authors_update.py
    git archive <commit> | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before OMP_NUM_THREADS=1 python benchmarks/authors_update.py

The authors' update is written from their rules in ``tests/authors_update.py`` (the one-step tests' reference);
every step runs hpe_bench's ``HeadPoseModule`` through a Lightning Trainer in float64 on CPU at crop 64 (a few
seconds each). Needs ``../shared/reference`` (fix 3's importer scales, fix 5's fixture weights).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import authors_update as AU  # noqa: E402
import hpe_bench  # noqa: E402
from hpe_bench import geometry as G  # noqa: E402

OPNET = ("experiment=opnet_blfs", "model.crop.size=64")
TRG = ("experiment=trg", "model.crop.size=64", "model.net.pretrained=false", "model.net.hidden=256")


def worst(update: dict, expected: dict, prefix: str = "", lr: float = 1e-4) -> tuple[float, str]:
    """Largest ``max |hpe - authors| / max |authors|`` over the parameter tensors named ``prefix*`` whose expected
    step is not ~0 (TRG's heatmap bias: a gradient of ~1e-19 by symmetry, ``authors_update.adam_state``)."""
    rows = [(float((update[n] - e).abs().max() / e.abs().max()), n) for n, e in expected.items()
            if n.startswith(prefix) and float(e.abs().max()) > 1e-9 * lr]
    return max(rows)


def opnet_step(kinds: list[str], *overrides: str):
    module, cfg = AU.build_module(*OPNET, *overrides)
    batch = AU.mixed_batch(kinds)
    grads, loss, _ = AU.forward_and_grads(module, batch,
                                          lambda pred, inputs: AU.opnet_authors_loss(pred, batch, inputs, kinds))
    clipped = AU.clip_inf_by_hand(grads, 0.1)
    state = AU.adam_state(clipped)
    lr = float(cfg.model.optimizer.lr)
    expected = AU.adam_by_hand(clipped, state, lr)
    terms = hpe_terms(module, batch)
    update, _ = AU.lightning_step(module, batch, state)
    return update, expected, loss, terms


def hpe_terms(module, batch):
    """hpe_bench's own loss terms for the same forward (same weights and dropout seed)."""
    import copy
    m = copy.deepcopy(module).train()
    inputs = m.crop(batch)
    torch.manual_seed(AU.SEED)
    pred = m.net(inputs)
    return {k: float(v) for k, v in m.loss_fn(pred, batch, inputs).items()}


def fix1():
    update, expected, _, _ = opnet_step(["full"] * 8)
    dev, name = worst(update, expected)
    return f"OpNet one step, 8 pose+landmark samples: worst relative update deviation {dev:.3g} ({name})"


def fix2():
    kinds = ["full"] * 5 + ["2d"] * 3
    # clipping on in both trees, so only the box terms' masking differs
    update, expected, loss, terms = opnet_step(kinds, "model.grad_clip_max_norm=0.1", "model.grad_clip_norm_type=inf")
    dev, name = worst(update, expected, "net.box_head")
    return (f"OpNet 5 pose+landmark + 3 2D-only (clipping on): roi / authors' box "
            f"{terms['roi'] / float(loss['box']):.4f}, nll_roi / authors' nllbox "
            f"{terms['nll_roi'] / float(loss['nllbox']):.4f}, box_head update deviation {dev:.3g} ({name})")


def importer_scales():
    """hpe_bench's regressor entries / the authors' (same order) under this tree's importer, on the fixture."""
    from test_import_checkpoint import authors_state_dict, reference
    from hpe_bench.importers import importer

    manifest, _ = reference("trg")
    authors = authors_state_dict(manifest)
    ours, _ = importer("trg").convert(authors, "fixture")
    fc1, w = authors["regressor.0.fc1.weight"], ours["regressors.0.trunk.0.weight"]
    pose, p = authors["regressor.0.decpose.weight"], ours["regressors.0.pose_head.weight"]
    ratio = lambda a, b: float((a / b).median())  # noqa: E731
    return {"pose dx,dy rows": ratio(p[7:9], pose[7:9]), "fc1 c dx,dy cols": ratio(w[:, -5:-3], fc1[:, -5:-3]),
            "fc1 tau cols": ratio(w[:, -3:-1], fc1[:, -3:-1])}


def fix3():
    """Adam's first step (empty state: -lr g / (|g| + eps) per entry) on the reparametrised entries, expressed in
    the authors' units (hpe_bench's entry / its importer scale): its median |.| / lr is the effective rate."""
    scales = importer_scales()
    module, cfg = AU.build_module(*TRG)
    batch = AU.mixed_batch(["full"] * 4, shape_params=False)
    update, _ = AU.lightning_step(module, batch, {})
    lr = float(cfg.model.optimizer.lr)
    groups = {"pose dx,dy rows": [update[f"net.regressors.{i}.pose_head.weight"][7:9] for i in range(3)],
              "fc1 c dx,dy cols": [update[f"net.regressors.{i}.trunk.0.weight"][:, -5:-3] for i in range(3)],
              "fc1 tau cols": [update[f"net.regressors.{i}.trunk.0.weight"][:, -3:-1] for i in range(3)]}
    rates = {k: float(torch.cat([x.flatten() for x in v]).abs().median()) / scales[k] / lr for k, v in groups.items()}
    return "TRG effective learning rate / the authors' (first Adam step, authors' units): " + ", ".join(
        f"{k} {v:.3f}" for k, v in rates.items())


def trg_step(kinds, box_shift: int | None = None):
    module, cfg = AU.build_module(*TRG)
    batch = AU.mixed_batch(kinds, shape_params=False)
    if box_shift is not None:
        side = batch["box"][box_shift, 2] - batch["box"][box_shift, 0]
        batch["box"][box_shift] += torch.tensor([0.45, 0.3, 0.45, 0.3], dtype=AU.D) * side
    grads, loss, entries = AU.forward_and_grads(module, batch, lambda p, i: AU.trg_authors_loss(p, batch, i),
                                                extra=AU.trg_authors_entries)
    g = AU.trg_expected_grads(grads, entries)
    state = AU.adam_state(g)
    expected = AU.adam_by_hand(g, state, float(cfg.model.optimizer.lr))
    terms = hpe_terms(module, batch)
    update, _ = AU.lightning_step(module, batch, state)
    return update, expected, loss, terms


def fix3_step():
    update, expected, _, _ = trg_step(["full"] * 4)
    devs = []
    for i in range(3):
        w, p = f"net.regressors.{i}.trunk.0.weight", f"net.regressors.{i}.pose_head.weight"
        devs += [float((update[w][:, -5:-1] - expected[w][:, -5:-1]).abs().max() / expected[w][:, -5:-1].abs().max()),
                 float((update[p][7:9] - expected[p][7:9]).abs().max() / expected[p][7:9].abs().max())]
    rest = worst(update, {k: v for k, v in expected.items() if "trunk.0.weight" not in k and "pose_head" not in k})
    return (f"TRG one step, 4 ARKitFace-like samples: dx/dy/tau entries' update deviation {max(devs):.3g}; "
            f"every other tensor {rest[0]:.3g}")


def fix4():
    update, expected, loss, terms = trg_step(["full", "2d", "full", "2d", "full", "2d"], box_shift=3)
    dev, name = worst(update, expected, "net.heatmap.weight")
    return (f"TRG 3 ARKitFace-like + 3 300W-LP-like: landmarks / authors' lmk68 "
            f"{terms['landmarks'] / float(loss['lmk68']):.4f}, heatmap conv update deviation {dev:.3g} ({name})")


def fix5():
    """The ResNet18 fixture weights on code windows 1 px from square, decoded by this tree vs the authors' rule."""
    from test_import_checkpoint import OPNET_CROP, authors_state_dict, reference
    from hpe_bench.importers import importer
    from hpe_bench.models.crop import CropInput

    manifest, io = reference("opnet_resnet18")
    net = importer("opnet").build_net({"backbone": "resnet18"})
    net.load_state_dict(importer("opnet").convert(authors_state_dict(manifest), "fixture")[0])
    net.eval().double()
    image = torch.from_numpy(io["raw_image"])[None, None].expand(1, 3, -1, -1).contiguous()
    base = torch.from_numpy(io["face_roi"][:1]).double() - 0.5
    lm_err = size_err = 0.0
    windows = 0
    for k in range(40):  # shifted boxes; keep those whose window rounds to a non-square one
        box = base + torch.tensor([0.13 * k, 0.07 * k, 0.13 * k + 0.05 * k, 0.07 * k])
        batch = {"image": image, "box": box, "K": torch.eye(3, dtype=AU.D)[None], "has_K": torch.zeros(1, dtype=bool)}
        inputs = CropInput(**OPNET_CROP)(batch)
        edge = inputs["box"].double() + 0.5
        w, h = float(edge[0, 2] - edge[0, 0]), float(edge[0, 3] - edge[0, 1])
        if w == h:
            continue
        windows += 1
        inputs = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inputs.items()}
        with torch.no_grad():
            pred = net(inputs)
        x0, y0 = float(edge[0, 0]), float(edge[0, 1])
        lm = pred["landmarks_crop"][0, :, :2]
        want = torch.stack([x0 + (lm[:, 0] + 1) * w / 2, y0 + (lm[:, 1] + 1) * h / 2], -1) - 0.5
        size = float(pred["coord"][0, 2]) * ((w * w + h * h) / 2) ** 0.5 / 2
        lm_err = max(lm_err, float((pred["landmarks_2d"][0] - want).norm(dim=-1).max()))
        size_err = max(size_err, abs(float(pred["coord_px"][0, 2]) - size))
    return (f"OpNet ResNet18 fixture weights, {windows} code windows 1 px from square: largest landmark error "
            f"{lm_err:.3g} px, size error {size_err:.3g} px against the authors' back-transform")


def main() -> None:
    print(f"hpe_bench from {Path(hpe_bench.__file__).parent}")
    for name, fn in (("1", fix1), ("2", fix2), ("3", fix3), ("3", fix3_step), ("4", fix4), ("5", fix5)):
        print(f"fix {name}: {fn()}", flush=True)


if __name__ == "__main__":
    main()
