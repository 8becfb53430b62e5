"""ARKitFace (Kao et al., PerspNet; used by TRG) in the layout its owners distribute.

Each record: ``image/<subject>/<action>/<id>_ar.jpg`` + ``info/<subject>/<action>/<id>_info.npz`` with
``verts (1220, 3)`` metres in ARKit's face frame and ``R_t (4, 4)``, a row-vector pose into an OpenGL camera
(``t_z < 0``). Labels in the package frames (docs/conventions.md, ``hpe_bench.geometry.frames``):

- ``R = F R_gl F``, ``t = F t_gl`` with ``F = diag(1, -1, -1)``, ``vertices = F verts`` (topology ``arkit1220``);
- ``K`` from ARKit's OpenGL projection (``assets.arkit_face()["arkit_projection"]``, P00 = P11 = 1.5744) and the
  image size: ``fx = P00 W/2``, ``fy = P11 H/2``, principal point ``(W/2, H/2)`` (TRG's rule);
- ``landmarks_2d`` = the 68 keypoint vertices projected, ``landmarks_3d`` = ``geometry.depth_relative_points``;
- ``box``: TRG's rule, a square centred on the 68 projected landmarks' extent, side 1.5 x its larger side.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import geometry as G
from ..assets import ARKIT_TOPOLOGY, arkit_face
from .raw import LayoutError, RawSource, RecordError, read_image, require_finite

LIST_COLUMNS = ("subject_id", "facial_action", "img_id")
NUM_VERTICES = 1220
BOX_SCALE = 1.5  # TRG: 0.75 x the landmark extent on each side of the centre


class ARKitFace(RawSource):
    """One ARKitFace split listed by ``<split>.csv``.

    ``root`` holds either ``image/`` and ``info/`` directly or, as distributed, ``ARKitFace_image_<split>/image``
    and ``ARKitFace_info_<split>/info``; ``list_file`` defaults to ``<root>/<split>.csv`` (columns
    ``subject_id, facial_action, img_id``, read as strings so ids keep leading zeros).
    """

    name = "arkitface"
    euler_rule = "trg"
    layout = ("<root>/train.csv, <root>/test.csv      (columns subject_id, facial_action, img_id)\n"
              "<root>/image/<subject_id>/<facial_action>/<img_id>_ar.jpg\n"
              "<root>/info/<subject_id>/<facial_action>/<img_id>_info.npz   (verts (1220, 3), R_t (4, 4))\n"
              "  or, as distributed: <root>/ARKitFace_image_<split>/image/... and "
              "<root>/ARKitFace_info_<split>/info/...")

    def __init__(self, root: str | Path | None, split: str = "train", list_file: str | Path | None = None):
        super().__init__(root, split)
        self.list_file = Path(list_file) if list_file else self.root / f"{split}.csv"
        self.require(self.list_file)
        self.image_dir = self._pick(f"ARKitFace_image_{split}", "image")
        self.info_dir = self._pick(f"ARKitFace_info_{split}", "info")
        frame = pd.read_csv(self.list_file, dtype=str)
        missing = [c for c in LIST_COLUMNS if c not in frame.columns]
        if missing:
            raise LayoutError(f"{self.name}: list {str(self.list_file)!r} lacks columns {missing} (has "
                              f"{list(frame.columns)}); expected layout:\n{self.layout}")
        self.records = list(frame[list(LIST_COLUMNS)].itertuples(index=False, name=None))
        asset = arkit_face()
        self._keypoints = torch.as_tensor(asset["keypoints_68"], dtype=torch.long)
        self._projection = torch.as_tensor(asset["arkit_projection"], dtype=torch.float64)

    def _pick(self, distributed: str, flat: str) -> Path:
        for path in (self.root / distributed / flat, self.root / flat):
            if path.is_dir():
                return path
        self.require(self.root / flat)  # neither exists: the error names the flat layout
        return self.root / flat

    def __len__(self) -> int:
        return len(self.records)

    def record_id(self, index: int) -> str:
        return "/".join(self.records[index])

    def paths(self, index: int) -> tuple[Path, Path]:
        subject, action, img_id = self.records[index]
        return (self.image_dir / subject / action / f"{img_id}_ar.jpg",
                self.info_dir / subject / action / f"{img_id}_info.npz")

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "list_file": self.list_file.name, "box_scale": BOX_SCALE}

    def _read_info(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with np.load(path) as data:
                verts, R_t = np.asarray(data["verts"], np.float64), np.asarray(data["R_t"], np.float64)
        except FileNotFoundError:
            raise RecordError(f"info file {str(path)!r} does not exist") from None
        except KeyError as err:
            raise RecordError(f"info file {str(path)!r} lacks {err} (needs 'verts' and 'R_t')") from None
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise RecordError(f"info file {str(path)!r} cannot be read: {err}") from None
        if verts.shape != (NUM_VERTICES, 3) or R_t.shape != (4, 4):
            raise RecordError(f"info file {str(path)!r}: verts {verts.shape} / R_t {R_t.shape}, expected "
                              f"({NUM_VERTICES}, 3) / (4, 4)")
        require_finite({"verts": verts, "R_t": R_t}, f"info file {str(path)!r}")
        return verts, R_t

    def read(self, index: int) -> dict[str, Any]:
        image_path, info_path = self.paths(index)
        image = read_image(image_path)
        verts, R_t = self._read_info(info_path)
        R_gl, t_gl = G.row_vector_pose(torch.as_tensor(R_t))
        R, t = G.opengl_to_opencv_pose(R_gl, t_gl)
        if not float(t[2]) > 0:
            raise RecordError(f"info file {str(info_path)!r}: head behind the camera (OpenGL t_z = {float(t_gl[2])}, "
                              f"expected < 0)")
        vertices = G.opengl_to_opencv_points(torch.as_tensor(verts))
        h, w = image.shape[:2]
        K = G.opengl_projection_to_intrinsics(self._projection, w, h)
        points_cam = G.transform_points(vertices[self._keypoints], R, t)
        landmarks_2d = G.project_points(points_cam, K)
        landmarks_3d = G.depth_relative_points(points_cam, K, t)
        box = G.square_box(G.box_from_points(landmarks_2d), BOX_SCALE)
        f32 = lambda x: x.numpy().astype(np.float32)  # noqa: E731
        return {
            "image": image, "box": f32(box), "dataset": self.name, "sample_id": f"{self.name}/{self.record_id(index)}",
            "topology": ARKIT_TOPOLOGY, "K": f32(K), "R": f32(R), "t": f32(t), "landmarks_2d": f32(landmarks_2d),
            "landmarks_3d": f32(landmarks_3d), "vertices": f32(vertices),
        }
