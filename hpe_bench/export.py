"""ONNX export of a trained (or untrained) network in one command, with a JSON sidecar.

    python -m hpe_bench.export run_dir=outputs/runs/<exp>/<time> [out=model.onnx] [opset=17] [outputs=quat,coord]
    python -m hpe_bench.export ckpt=<dir>/checkpoints/last.ckpt           # config found next to the checkpoint
    python -m hpe_bench.export untrained=true model=opnet model.net.backbone=resnet18 out=opnet_r18.onnx
    python -m hpe_bench.export run_dir=... int8=true [calib=synthetic] [calib_batches=8] [eval_batches=8]

The net is rebuilt from the run's resolved config (``model.net`` and ``model.crop``, Hydra ``_target_``), the
``net.*`` weights of the Lightning checkpoint are loaded strictly, and the eval-mode net is exported with named
inputs/outputs and a dynamic batch axis (the net's own ``export_spec()`` says which: ``hpe_bench.deploy.spec``).
``model.json`` next to ``model.onnx`` records the preprocessing (crop size, channels, mean/std, box_scale), the
outputs, the source and the git version; with ``check=true`` (default) ONNX Runtime is run once and its difference to PyTorch stored.
Every file is written atomically. docs/deployment.md explains the outputs and how to run them.
"""
from __future__ import annotations

import json
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .deploy.onnx_ops import export_symbolics
from .deploy.spec import INPUT_DESCRIPTIONS
from .deploy.wrappers import ExportWrapper, example_inputs, export_spec, net_outputs, select_outputs
from .outputs import atomic_path, git_version, write_json

DEFAULT_OPSET = 17  # >= 16 for GridSample (TRG)
EXPORT_KEYS = ("run_dir", "ckpt", "out", "opset", "outputs", "untrained", "check", "batch", "dynamic_batch",
               "int8", "calib", "calib_batches", "eval_batches")
USAGE = __doc__.split("\n\n")[1]


# -- config and weights ----------------------------------------------------------------------------------
def find_run_dir(ckpt: Path) -> Path:
    """The run directory of a checkpoint: the nearest parent holding ``run_info.json`` or ``.hydra/config.yaml``."""
    for parent in list(ckpt.resolve().parents)[:3]:
        if (parent / "run_info.json").is_file() or (parent / ".hydra" / "config.yaml").is_file():
            return parent
    raise FileNotFoundError(f"no run config (run_info.json or .hydra/config.yaml) found above checkpoint {ckpt}")


def load_run_config(run_dir: Path) -> tuple[DictConfig, Path]:
    """The run's resolved config (``run_info.json["config"]``, else ``.hydra/config.yaml``) and its file."""
    info = run_dir / "run_info.json"
    if info.is_file():
        data = json.loads(info.read_text())
        if "config" in data:
            return OmegaConf.create(data["config"]), info
    hydra_cfg = run_dir / ".hydra" / "config.yaml"
    if hydra_cfg.is_file():
        return OmegaConf.load(hydra_cfg), hydra_cfg
    raise FileNotFoundError(f"run directory {run_dir} has neither run_info.json (with 'config') nor .hydra/config.yaml")


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """Compose ``conf/config.yaml`` with command-line overrides (for ``untrained=true``)."""
    from hydra import compose, initialize_config_dir

    from .__main__ import CONF_DIR
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def build_model(cfg: DictConfig, source: str) -> tuple[nn.Module, nn.Module]:
    """``(net, crop)`` instantiated from ``cfg.model.net`` and ``cfg.model.crop``."""
    for key in ("net", "crop"):
        if OmegaConf.select(cfg, f"model.{key}") is None:
            raise KeyError(f"config key model.{key} missing in {source}")
    return instantiate(cfg.model.net), instantiate(cfg.model.crop)


def load_net_weights(net: nn.Module, ckpt: Path) -> None:
    """Load the ``net.*`` entries of a Lightning checkpoint's ``state_dict`` into ``net`` (strict)."""
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if "state_dict" not in state:
        raise KeyError(f"{ckpt} is not a Lightning checkpoint (no 'state_dict')")
    net_state = {k[len("net."):]: v for k, v in state["state_dict"].items() if k.startswith("net.")}
    if not net_state:
        raise KeyError(f"{ckpt}: no 'net.*' weights in state_dict")
    try:
        net.load_state_dict(net_state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"weights in {ckpt} do not fit the net built from the run config: {err}") from err


# -- export ----------------------------------------------------------------------------------------------
def export_onnx(net: nn.Module, crop: nn.Module, out: str | Path, opset: int = DEFAULT_OPSET,
                outputs: Sequence[str] | None = None, batch_size: int = 2, check: bool = True,
                dynamic_batch: bool = True, source: dict[str, Any] | None = None,
                net_config: Any = None) -> dict[str, Any]:
    """Export ``net`` (eval mode) to ``out`` and write the sidecar ``out.with_suffix('.json')``; returns it.

    ``outputs``: ONNX output names to keep (default: every output of the net's ``ExportSpec``).
    ``dynamic_batch=False`` fixes the batch axis to ``batch_size``: the exporter then folds the shape
    arithmetic of the heads into constants (fewer tiny nodes, lower batch-1 latency).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net.eval()
    spec = export_spec(net)
    if int(crop.channels) != spec.in_chans:
        raise ValueError(f"{spec.kind} expects {spec.in_chans}-channel crops but model.crop gives {int(crop.channels)} "
                         "(model.crop.grayscale)")
    example = example_inputs(crop, spec.inputs, batch_size)
    reference = net_outputs(net, example)
    spec = select_outputs(spec, list(reference), outputs)
    out_names = list(spec.outputs)
    wrapper = ExportWrapper(net, spec.inputs, [key for key, _ in spec.outputs.values()]).eval()
    with atomic_path(out) as tmp, export_symbolics(opset), warnings.catch_warnings():
        # The TorchScript exporter (the dynamo one cannot trace TRG yet, see docs/deployment.md) warns that it
        # is legacy, and the tracer about Python bools (batch-independent shape logic): both expected.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, tuple(example[n] for n in spec.inputs), str(tmp), dynamo=False,
                          input_names=list(spec.inputs), output_names=out_names, opset_version=int(opset),
                          dynamic_axes={n: {0: "N"} for n in [*spec.inputs, *out_names]} if dynamic_batch else None,
                          do_constant_folding=True)
        onnx.checker.check_model(str(tmp))
    net.eval()  # the exporter restores the wrapper's mode recursively; keep the net in eval for callers

    batch_dim: Any = "N" if dynamic_batch else int(batch_size)
    sidecar: dict[str, Any] = {
        "format": "hpe_bench-onnx-sidecar/1",
        "model": spec.kind,
        "net_class": type(net).__name__,
        "net_config": net_config,
        "onnx": {"file": out.name, "opset": int(opset), "exporter": "torch.onnx (TorchScript)",
                 "torch": torch.__version__, "onnx": onnx.__version__},
        "inputs": [{"name": n, "dtype": "float32", "shape": [batch_dim, *example[n].shape[1:]],
                    "description": INPUT_DESCRIPTIONS.get(n, "")} for n in spec.inputs],
        "outputs": [{"name": n, "net_key": key, "shape": [batch_dim, *reference[key].shape[1:]], "description": desc}
                    for n, (key, desc) in spec.outputs.items()],
        "constants": {k: reference[k].tolist() for k in spec.constants},
        "preprocessing": preprocessing_spec(crop),
        "source": source or {},
        "git": git_version(),
        "created_utc": datetime.now(timezone.utc).isoformat(),
    }
    if check:
        sidecar["check"] = check_against_torch(out, spec.inputs, out_names, example, reference, spec)
    write_json(out.with_suffix(".json"), sidecar)
    return sidecar


def preprocessing_spec(crop: nn.Module) -> dict[str, Any]:
    """What ``CropInput`` does before the net, in numbers a deployment can reproduce."""
    return {
        "crop_size": int(crop.size), "channels": int(crop.channels), "grayscale": bool(crop.grayscale),
        "box_scale": float(crop.box_scale),
        "mean": crop.mean.flatten().tolist(), "std": crop.std.flatten().tolist(),
        "pixel_range": "[0, 1] (uint8 / 255) before (x - mean) / std",
        # the authors' input conventions (model=*_code, geometry.reference_code); "corner"/"bilinear"/
        # "principal_point"/false is hpe_bench's own crop, the only one deploy.runtime.crop_inputs implements
        "mapping": getattr(crop, "mapping", "corner"), "resize": getattr(crop, "resize", "bilinear"),
        "bbox_reference": getattr(crop, "bbox_reference", "principal_point"),
        "quantize": bool(getattr(crop, "quantize", False)),
        "crop": "square_box(box, box_scale): centre kept, side = box_scale * max(w, h); then the affine "
                "A = geometry.crop_transform(box, crop_size) (x' = (x - x0) * S / side), bilinear "
                "(OpenCV warpAffine with A[:2] matches); grayscale = 0.299 R + 0.587 G + 0.114 B",
    }


def check_against_torch(path: Path, input_names: Sequence[str], output_names: Sequence[str],
                        example: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], spec) -> dict:
    """Max abs difference ONNX Runtime vs PyTorch per output on the export's example batch."""
    from .deploy.runtime import make_session, run_session
    got = run_session(make_session(path, threads=1), example)
    diffs = {n: float(np.abs(got[n] - reference[spec.outputs[n][0]].numpy()).max()) for n in output_names}
    return {"batch_size": int(next(iter(example.values())).shape[0]), "max_abs_diff": diffs}


def export_quantizable(net: nn.Module, crop: nn.Module, out: str | Path, **export_kw) -> tuple[Path, list[str]]:
    """The float32 graph int8 quantisation starts from, written to ``out``: ``net`` with its transposed
    convolutions as sub-pixel convolutions (``deploy.subpixel``: the same numbers, but ONNX Runtime has int8
    kernels for ``Conv`` and none for ``ConvTranspose``). Returns ``(out, rewrites)``, ``rewrites`` saying
    what was changed (empty: the graph is ``net`` as is)."""
    from .deploy.subpixel import subpixel_deconvs
    deploy_net, count = subpixel_deconvs(net)
    export_onnx(deploy_net, crop, out, check=False, **export_kw)
    Path(out).with_suffix(".json").unlink(missing_ok=True)  # the int8 model's sidecar is the float32 one's
    rewrites = [f"{count} ConvTranspose2d -> Conv2d + pixel_shuffle (deploy.subpixel, BatchNorm folded)"] if count else []
    return Path(out), rewrites


def int8_model(net: nn.Module, crop: nn.Module, out: Path, sidecar: dict[str, Any], opts: dict[str, str],
               cfg: DictConfig) -> dict[str, Any]:
    """The int8 model beside ``out`` (``deploy.quantize``), calibrated on ``calib=<data option>`` (default
    synthetic: its train split, ``calib_batches`` batches of 16) and compared on its test split."""
    from .deploy.quantize import export_int8
    calib = opts.get("calib", "synthetic")
    nc, ne = int(opts.get("calib_batches", 8)), int(opts.get("eval_batches", 8))
    data_cfg = compose_config([f"data={calib}", "data.batch_size=16", "data.num_workers=0"]
                              + ([f"data.train.num_samples={16 * nc}", f"data.val.num_samples=16",
                                  f"data.test.num_samples={16 * ne}"] if calib == "synthetic" else [])).data
    names = {o["name"]: o["net_key"] for o in sidecar["outputs"]}
    dynamic = sidecar["inputs"][0]["shape"][0] == "N"
    with tempfile.TemporaryDirectory() as tmp:
        source, rewrites = export_quantizable(
            net, crop, Path(tmp) / out.name, opset=sidecar["onnx"]["opset"], outputs=list(names),
            batch_size=2 if dynamic else int(sidecar["inputs"][0]["shape"][0]), dynamic_batch=dynamic)
        record = export_int8(out, crop, [i["name"] for i in sidecar["inputs"]], names, instantiate(data_cfg), nc, ne,
                             euler_rule=str(data_cfg.get("euler_rule", "trg")), source=source)
    return record | {"calibration": record["calibration"] | {"data": calib}, "graph_rewrites": rewrites}


# -- CLI -------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` arguments into export options (``EXPORT_KEYS``) and Hydra overrides."""
    opts, overrides = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"arguments are key=value, got {arg!r}\n\n{USAGE}")
        if key in EXPORT_KEYS:
            opts[key] = value
        else:
            overrides.append(arg)
    return opts, overrides


def _flag(value: str | None, default: bool) -> bool:
    return default if value is None else value.lower() in ("1", "true", "yes")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    opts, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    untrained = _flag(opts.get("untrained"), False)
    if untrained:
        if "run_dir" in opts or "ckpt" in opts:
            raise SystemExit("untrained=true builds from conf/ only; drop run_dir=/ckpt=")
        cfg, cfg_source, ckpt, run_dir = compose_config(overrides), "conf/config.yaml", None, None
        choice = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "model")
    else:
        if overrides:
            raise SystemExit(f"config overrides {overrides} only apply with untrained=true (a run's config is fixed)")
        if "ckpt" in opts:
            ckpt = Path(opts["ckpt"])
            run_dir = Path(opts["run_dir"]) if "run_dir" in opts else find_run_dir(ckpt)
        elif "run_dir" in opts:
            run_dir = Path(opts["run_dir"])
            ckpt = run_dir / "checkpoints" / "last.ckpt"
        else:
            raise SystemExit(f"give run_dir=, ckpt= or untrained=true\n\n{USAGE}")
        cfg, cfg_path = load_run_config(run_dir)
        cfg_source, choice = str(cfg_path), None
    net, crop = build_model(cfg, cfg_source)
    if ckpt is not None:
        load_net_weights(net, ckpt)
    spec_kind = export_spec(net).kind
    default_out = (Path("outputs/export") / f"{choice}_untrained.onnx" if untrained
                   else run_dir / "export" / f"{spec_kind}.onnx")
    out = Path(opts.get("out", default_out))
    requested = [s for s in opts.get("outputs", "").split(",") if s] or None
    source = {"run_dir": str(run_dir) if run_dir else None, "ckpt": str(ckpt) if ckpt else None,
              "config": cfg_source, "untrained": untrained, "overrides": overrides}
    sidecar = export_onnx(net, crop, out, opset=int(opts.get("opset", DEFAULT_OPSET)), outputs=requested,
                          batch_size=int(opts.get("batch", 2)), check=_flag(opts.get("check"), True),
                          dynamic_batch=_flag(opts.get("dynamic_batch"), True),
                          source=source, net_config=OmegaConf.to_container(cfg.model.net, resolve=True))
    if _flag(opts.get("int8"), False):
        sidecar["int8"] = int8_model(net, crop, out, sidecar, opts, cfg)
        write_json(out.with_suffix(".json"), sidecar)
        print(f"wrote {out.parent / sidecar['int8']['file']}: int8 vs float32 on the test split: " + ", ".join(
            f"{k} {v:.3g}" for k, v in sidecar["int8"]["int8_vs_fp32"].items() if not k.startswith("mean_abs")
            and isinstance(v, float)))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    print("inputs: " + ", ".join(f"{i['name']} {i['shape']}" for i in sidecar["inputs"]))
    print("outputs: " + ", ".join(f"{o['name']} {o['shape']}" for o in sidecar["outputs"]))
    if "check" in sidecar:
        diffs = sidecar["check"]["max_abs_diff"]
        print("max |onnxruntime - torch|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return sidecar


if __name__ == "__main__":
    main()
