"""`hpe-bench show`: labels land where hand-computed, the contact sheet of the real entry point, bad inputs."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from hpe_bench import show

ROOT = Path(__file__).resolve().parents[1]


def sample(W=100, H=100, **labels):
    s = {"image": np.full((H, W, 3), 60, np.uint8), "box": np.array([20.0, 20.0, 60.0, 60.0]), "sample_id": "x/0"}
    s.update(labels)
    return s


def is_colour(px, rgb, tol=70):
    return np.abs(px.astype(int) - np.array(rgb)).max() < tol


def test_labels_land_where_computed_by_hand():
    K = np.array([[100.0, 0, 49.5], [0, 100.0, 49.5], [0, 0, 1]])
    s = sample(R=np.eye(3), t=np.array([0.0, 0.0, 1.0]), K=K, landmarks_2d=np.tile([[80.0, 30.0]], (68, 1)))
    img, drawn = show.panel(s, size=100)
    assert img.shape == (100, 100, 3)
    assert {"box", "K", "R", "landmarks_2d"} <= set(drawn) and "vertices" not in drawn
    # R = I, t = 1 m ahead: the head x axis (red) runs from the principal point (49.5, 49.5) to
    # u = 100 * 0.08 + 49.5 = 57.5 along the row y = 49.5
    assert is_colour(img[50, 54], (230, 25, 25)) or is_colour(img[49, 54], (230, 25, 25))
    assert is_colour(img[20, 40], (255, 255, 0))  # top edge of the box
    assert is_colour(img[30, 80], (0, 255, 0))  # the landmark


def test_panel_scales_labels_with_the_image():
    """A 200 x 100 image at panel size 100 is halved: a landmark at (150, 60) is drawn at (75, 30)."""
    s = sample(W=200, H=100, landmarks_2d=np.tile([[150.0, 60.0]], (68, 1)))
    img, _ = show.panel(s, size=100)
    assert img.shape == (50, 100, 3)
    assert is_colour(img[30, 75], (0, 255, 0))
    assert not is_colour(img[30, 60], (0, 255, 0))


def test_bad_inputs(capsys):
    assert show.main(["split=test"]) == 2
    assert "data=<name>" in capsys.readouterr().err
    assert show.main(["data=no_such_data"]) == 2
    assert "no_such_data" in capsys.readouterr().err
    assert show.main(["data=aflw2kmini", "data.root=/no/such/file.h5"]) == 2
    assert "/no/such/file.h5" in capsys.readouterr().err
    assert show.main(["data=synthetic", "oops"]) == 2


@pytest.mark.slow
def test_contact_sheet_of_the_synthetic_set(tmp_path):
    script = Path(sys.executable).parent / "hpe-bench"
    out = tmp_path / "sheet.png"
    env = dict(os.environ, HPE_BENCH_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([str(script), "show", "data=synthetic", "data.test.num_samples=6",
                           "data.train.image_size=96", "n=4", "cols=2", "size=128", f"out={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] == 2 * 128 + 3 * 3  # two panels, three pads
    assert img.shape[0] > 2 * 128
