"""TRG's reference-code translation rule ``model.net.principal=image_centre`` (docs/reproducing.md): tau relative
to the image centre (W/2, H/2), fed by ``CropInput``'s ``image_size``; hand-derived values."""
import pytest
import torch

from hpe_bench.models.crop import CropInput
from hpe_bench.models.trg import TRG
from hpe_bench.models.trg_parts import correction_to_translation

D = torch.float64


def test_image_centre_rule_by_hand():
    """box (40, 50, 100, 110): b = 60, centre (70, 80); image 160 x 120: centre (80, 60), tau = (-10, 20);
    c = (1, 0.1, -0.05), f = 300: Tz = 0.2 * 300 / 60 = 1, Tx = (-10 + 6) / 300, Ty = (20 - 3) / 300.
    K's principal point (90, 55) plays no part; with it (principal_point) tau = (-20, 25)."""
    box = torch.tensor([[40.0, 50.0, 100.0, 110.0]], dtype=D)
    K = torch.tensor([[[300.0, 0.0, 90.0], [0.0, 300.0, 55.0], [0.0, 0.0, 1.0]]], dtype=D)
    c = torch.tensor([[1.0, 0.1, -0.05]], dtype=D)
    t = correction_to_translation(c, box, K, principal="image_centre", image_size=torch.tensor([[160.0, 120.0]], dtype=D))
    torch.testing.assert_close(t, torch.tensor([[-4.0 / 300, 17.0 / 300, 1.0]], dtype=D), rtol=0, atol=1e-12)
    t_pp = correction_to_translation(c, box, K)
    torch.testing.assert_close(t_pp, torch.tensor([[-14.0 / 300, 22.0 / 300, 1.0]], dtype=D), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="image_size"):
        correction_to_translation(c, box, K, principal="image_centre")


def test_network_reads_image_size_from_crop_input():
    """CropInput gives image_size = (W, H) of the batch image; a one-iteration TRG (same weights, same regressed
    c) then differs between the rules only by tau: t_ic - t_pp = Tz ((cx - W/2) / fx, (cy - H/2) / fy, 0) =
    Tz (0.1, -0.06, 0) for cx = W/2 + 10, cy = H/2 - 6, f = 100."""
    W, H, B = 96, 80, 2
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[100.0, 0.0, W / 2 + 10], [0.0, 100.0, H / 2 - 6], [0.0, 0.0, 1.0]]).expand(B, 3, 3)
    batch = {"image": torch.randint(0, 256, (B, 3, H, W), generator=g, dtype=torch.uint8),
             "box": torch.tensor([[20.0, 15.0, 60.0, 55.0], [30.0, 20.0, 70.0, 64.0]]), "K": K,
             "has_K": torch.ones(B, dtype=torch.bool)}
    inputs = CropInput(size=64)(batch)
    torch.testing.assert_close(inputs["image_size"], torch.tensor([[96.0, 80.0]] * B), rtol=0, atol=0)
    light = dict(backbone="resnet10t", grid_size=6, hidden=32, iterations=1, heatmaps=False)
    torch.manual_seed(0)
    net_pp = TRG(**light).eval()
    net_ic = TRG(principal="image_centre", **light).eval()
    net_ic.load_state_dict(net_pp.state_dict())
    with torch.no_grad():
        out_pp, out_ic = net_pp(inputs), net_ic(inputs)
    torch.testing.assert_close(out_ic["translation_params_iters"][0], out_pp["translation_params_iters"][0])
    tz = out_pp["t"][:, 2]
    expected = out_pp["t"] + tz[:, None] * torch.tensor([0.1, -0.06, 0.0])
    torch.testing.assert_close(out_ic["t"], expected, rtol=1e-5, atol=1e-6)
