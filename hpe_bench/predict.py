"""``hpe-bench predict`` / ``python -m hpe_bench.predict``: head pose of every face in images, folders and videos.

    hpe-bench predict face.jpg --model outputs/runs/<exp>/<time>/checkpoints/last.ckpt
    hpe-bench predict photos/ clip.mp4 --model model.onnx --intrinsics 900 900 640 360 --smooth
    hpe-bench predict frames/ --model last.ckpt --boxes boxes.csv --out results/

Faces come from the MTCNN detector (``hpe_bench.detect``) or a boxes file. Writes into ``--out``:
``predictions.csv`` and ``predictions.jsonl`` (one row per face and frame; a frame without a face is a row
with ``face_found = false``) and ``annotated/`` images / videos (box, head axes, landmarks, dense face).
Everything is staged in temporary files and renamed at the end: a failed run leaves nothing behind.
Bad inputs (missing file, unreadable image or video, no face anywhere) exit with status 2 and a message.
docs/predict.md describes every column.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import pandas as pd
import torch

from . import geometry as G
from . import viz
from .cli import run_tool
from .detect import BoxFileDetector, InputError, MTCNNDetector, box_iou
from .predictor import intrinsics, load_predictor
from .smoothing import OneEuroParams, OneEuroPoseFilter

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXT = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class Staging:
    """Temporary files next to their final names, renamed together by ``commit`` or removed by ``abort``."""

    def __init__(self):
        self.files: list[tuple[Path, Path]] = []
        self.made: list[Path] = []  # folders this staging created (removed again by abort)

    def path(self, final: Path) -> Path:
        missing = [d for d in (final.parent, *final.parent.parents) if not d.exists()]
        final.parent.mkdir(parents=True, exist_ok=True)
        self.made += missing
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}.", suffix=final.suffix)
        os.close(fd)
        self.files.append((Path(tmp), final))
        return Path(tmp)

    def commit(self) -> None:
        from .filemode import share
        for tmp, final in self.files:
            share(tmp)  # mkstemp's 0600 -> the umask's mode
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        self.files = []

    def abort(self) -> None:
        for tmp, _ in self.files:
            tmp.unlink(missing_ok=True)
        for d in sorted(set(self.made), key=lambda d: len(d.parts), reverse=True):  # deepest first
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        self.files, self.made = [], []


def expand_inputs(paths: Sequence[str]) -> list[tuple[str, str]]:
    """``[(path, "image" | "video")]``: files as given, folders expanded to their images and videos (sorted)."""
    found: list[tuple[str, str]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            items = sorted(q for q in path.iterdir() if q.suffix.lower() in IMAGE_EXT + VIDEO_EXT)
            if not items:
                raise InputError(f"folder {path} holds no image or video ({', '.join(IMAGE_EXT + VIDEO_EXT)})")
            found += [(str(q), "video" if q.suffix.lower() in VIDEO_EXT else "image") for q in items]
        elif path.is_file():
            found.append((str(path), "video" if path.suffix.lower() in VIDEO_EXT else "image"))
        else:
            raise InputError(f"input not found: {path}")
    return found


def read_image(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot read image {path} (missing, corrupt or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def video_frames(path: str) -> tuple[Iterator[np.ndarray], float, int]:
    """RGB frames of a video, its frame rate and frame count (0 if unknown); ``InputError`` if unreadable."""
    cap = cv2.VideoCapture(path)
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok or first is None:
        cap.release()
        raise InputError(f"cannot read video {path} (not a video, corrupt, or no decodable frame)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def frames() -> Iterator[np.ndarray]:
        frame = first
        try:
            while frame is not None:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                ok, frame = cap.read()
                frame = frame if ok else None
        finally:
            cap.release()
    return frames(), (fps if fps > 0 else 30.0), count


def face_rows(pred: dict[str, Any], boxes: np.ndarray, scores: np.ndarray, K: np.ndarray, k_rule: str,
              euler_rule: str, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per face: box, rotation, Euler angles under ``euler_rule``, translation, landmarks, uncertainty."""
    rows = []
    R = torch.as_tensor(pred["R"], dtype=torch.float64)
    ypr = G.matrix_to_euler(R, euler_rule).numpy()
    for i in range(len(boxes)):
        row = dict(base, face=i, face_found=True, det_score=float(scores[i]),
                   box_x0=boxes[i, 0], box_y0=boxes[i, 1], box_x1=boxes[i, 2], box_y1=boxes[i, 3])
        row.update({f"R_{a}{b}": float(R[i, a, b]) for a in range(3) for b in range(3)})
        row.update(yaw_deg=float(ypr[i, 0]), pitch_deg=float(ypr[i, 1]), roll_deg=float(ypr[i, 2]),
                   euler_rule=euler_rule)
        t = pred.get("t")
        row.update({f"t_{ax}_m": float(t[i, k]) if t is not None else float("nan") for k, ax in enumerate("xyz")})
        row["translation"] = "none" if t is None else ("metric" if k_rule == "user" else "relative")
        row.update(fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2], intrinsics=k_rule)
        lm = pred.get("landmarks_2d")
        row["landmarks_2d"] = json.dumps(np.round(lm[i], 2).tolist()) if lm is not None else ""
        for name, v in pred.get("uncertainty", {}).items():
            row[name] = float(v[i])
        rows.append(row)
    return rows


def no_face_row(base: dict[str, Any], K: np.ndarray, k_rule: str, euler_rule: str) -> dict[str, Any]:
    return dict(base, face=-1, face_found=False, euler_rule=euler_rule, fx=K[0, 0], fy=K[1, 1], cx=K[0, 2],
                cy=K[1, 2], intrinsics=k_rule)


def annotate(image: np.ndarray, pred: dict[str, Any] | None, boxes: np.ndarray, K: np.ndarray,
             euler_rule: str) -> np.ndarray:
    """Box, head axes (from R, t and K when the model predicts t), landmarks and dense vertices of every face."""
    out = image
    if pred is None or len(boxes) == 0:
        return viz.draw_text(out, "no face", (8, 22), color=(255, 80, 80), scale=0.6)
    ypr = G.matrix_to_euler(torch.as_tensor(pred["R"]), euler_rule).numpy()
    for i, box in enumerate(boxes):
        R = pred["R"][i]
        out = viz.draw_box(out, box)
        if "vertices" in pred and "t" in pred:
            cam = G.transform_points(torch.as_tensor(pred["vertices"][i]), torch.as_tensor(R),
                                     torch.as_tensor(pred["t"][i]))
            uv = G.project_points(cam, torch.as_tensor(K)).numpy()
            out = viz.draw_landmarks(out, uv[::4], color=(200, 200, 255), radius=0.8)
        if "landmarks_2d" in pred:
            out = viz.draw_landmarks(out, pred["landmarks_2d"][i], color=(0, 255, 0), radius=1.5)
        side = float(max(box[2] - box[0], box[3] - box[1]))
        if "t" in pred and pred["t"][i, 2] > 0:
            out = viz.draw_axes(out, R, pred["t"][i], K, length_m=0.1, thickness=2)
        else:
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            out = viz.draw_axes_ortho(out, R, centre, 0.5 * side)
        label = "y%+.0f p%+.0f r%+.0f" % tuple(np.round(ypr[i]) + 0.0)  # + 0.0: no "-0"
        out = viz.draw_text(out, label, (box[0], max(box[1] - 6, 14)), scale=0.45)
    return out


class Tracker:
    """Per-face One Euro filters across video frames; faces are matched to tracks by box IoU (greedy)."""

    def __init__(self, params: OneEuroParams, min_iou: float = 0.3):
        self.params, self.min_iou = params, min_iou
        self.tracks: list[tuple[np.ndarray, OneEuroPoseFilter]] = []

    def __call__(self, pred: dict[str, Any], boxes: np.ndarray, dt: float) -> list[int]:
        iou = box_iou(boxes, np.stack([b for b, _ in self.tracks])) if self.tracks else np.zeros((len(boxes), 0))
        ids, used = [], set()
        for i in range(len(boxes)):
            j = next((j for j in np.argsort(-iou[i]) if j not in used and iou[i, j] >= self.min_iou), None)
            if j is None:
                self.tracks.append((boxes[i], OneEuroPoseFilter(self.params)))
                j = len(self.tracks) - 1
            used.add(j)
            filt = self.tracks[j][1]
            self.tracks[j] = (boxes[i], filt)
            t = None if "t" not in pred else torch.as_tensor(pred["t"][i])
            R_s, t_s = filt(torch.as_tensor(pred["R"][i]), t, dt)
            pred["R"][i] = R_s.numpy()
            if t_s is not None:
                pred["t"][i] = t_s.numpy()
            ids.append(int(j))
        return ids


def run(args: argparse.Namespace) -> dict[str, Any]:
    inputs = expand_inputs(args.inputs)
    for path, kind in inputs:  # fail before any work on an unreadable input
        if kind == "image":
            read_image(path)
        else:
            video_frames(path)[0].close()
    detector = BoxFileDetector(args.boxes) if args.boxes else MTCNNDetector(min_score=args.min_score)
    predictor = load_predictor(args.model)
    out_dir = Path(args.out or Path("outputs/predict") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    stage, rows = Staging(), []
    progress = _progress(not args.quiet)
    try:
        for path, kind in inputs:
            if kind == "image":
                rows += process_frame(read_image(path), path, 0, None, detector, predictor, args, stage, out_dir)
                progress(path)
                continue
            frames, fps, count = video_frames(path)
            tracker = Tracker(OneEuroParams(args.min_cutoff, args.beta)) if args.smooth else None
            writer, first = None, True
            for index, frame in enumerate(_tqdm(frames, count, path, args.quiet)):
                if first and not args.no_annotate:
                    tmp = stage.path(out_dir / "annotated" / f"{Path(path).stem}.mp4")
                    H, W = frame.shape[:2]
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
                    if not writer.isOpened():
                        raise InputError(f"cannot write the annotated video {tmp} (no mp4v encoder?); "
                                         "use --no-annotate")
                first = False
                rows += process_frame(frame, path, index, (tracker, 1.0 / fps), detector, predictor, args, stage,
                                      out_dir, writer=writer, time_s=index / fps)
            if writer is not None:
                writer.release()
        if not any(r["face_found"] for r in rows):
            raise InputError(f"no face found in any input ({len(rows)} frames); check the inputs, lower "
                             f"--min-score (now {args.min_score}) or give --boxes FILE")
        frame_df = pd.DataFrame(rows)
        frame_df.to_csv(stage.path(out_dir / "predictions.csv"), index=False)
        with open(stage.path(out_dir / "predictions.jsonl"), "w") as fh:
            for row in rows:
                row = {k: (json.loads(v) if k == "landmarks_2d" and v else v) for k, v in row.items()}
                fh.write(json.dumps(_plain(row)) + "\n")
        stage.commit()
    except BaseException:
        stage.abort()
        raise
    faces = int(frame_df["face_found"].sum())
    summary = {"out": str(out_dir), "frames": int(frame_df.groupby(["source", "frame"]).ngroups), "faces": faces,
               "frames_without_face": int((~frame_df["face_found"]).sum()), "detector": detector.name,
               "model": str(args.model), "euler_rule": args.euler_rule}
    return summary


def process_frame(image, source, index, smoothing, detector, predictor, args, stage, out_dir, writer=None,
                  time_s=0.0) -> list[dict[str, Any]]:
    H, W = image.shape[:2]
    K, k_rule = intrinsics(args.intrinsics, W, H)
    K_user = K if args.intrinsics is not None else None
    boxes, scores = detector(image, source, index)
    if args.max_faces:
        boxes, scores = boxes[:args.max_faces], scores[:args.max_faces]
    base = {"source": source, "frame": index, "time_s": time_s, "detector": detector.name, "model": str(args.model),
            "smoothed": bool(smoothing and smoothing[0] is not None)}
    pred = None
    if len(boxes):
        pred = predictor(image, boxes, K_user)
        if smoothing and smoothing[0] is not None:
            ypr_raw = G.matrix_to_euler(torch.as_tensor(pred["R"]), args.euler_rule).numpy()
            tracks = smoothing[0](pred, boxes, smoothing[1])
        rows = face_rows(pred, boxes, scores, K, k_rule, args.euler_rule, base)
        if smoothing and smoothing[0] is not None:
            for row, track, raw in zip(rows, tracks, ypr_raw):
                row.update(track=track, raw_yaw_deg=raw[0], raw_pitch_deg=raw[1], raw_roll_deg=raw[2])
    else:
        rows = [no_face_row(base, K, k_rule, args.euler_rule)]
    if not args.no_annotate:
        drawn = annotate(image, pred, boxes, K, args.euler_rule)
        if writer is not None:
            writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        else:
            tmp = stage.path(out_dir / "annotated" / f"{Path(source).stem}.png")
            if not cv2.imwrite(str(tmp), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {tmp}")
    return rows


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _tqdm(it, total: int, desc: str, quiet: bool):
    from tqdm import tqdm
    return tqdm(it, total=total or None, desc=Path(desc).name, unit="frame", disable=quiet, file=sys.stderr)


def _progress(enabled: bool):
    def show(path: str) -> None:
        if enabled:
            print(f"  {path}", file=sys.stderr)
    return show


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpe-bench predict", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:6]))
    p.add_argument("inputs", nargs="+", help="images, folders of images/videos, video files")
    p.add_argument("--model", required=True, help="a run's Lightning checkpoint (.ckpt) or an exported .onnx")
    p.add_argument("--out", help="output folder (default outputs/predict/<time>)")
    p.add_argument("--boxes", help="CSV source,frame,x0,y0,x1,y1 instead of the detector")
    p.add_argument("--min-score", type=float, default=0.9, help="detector score threshold (default 0.9)")
    p.add_argument("--max-faces", type=int, default=0, help="keep the N best faces per frame (0: all)")
    p.add_argument("--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"),
                   help="camera intrinsics in pixels (default: the fallback f = W + H, metric translation lost)")
    p.add_argument("--euler-rule", default="opnet", choices=G.EULER_RULES,
                   help="rule of the yaw/pitch/roll columns (docs/conventions.md; default opnet = 300W-LP Pose_Para)")
    p.add_argument("--smooth", action="store_true", help="videos: One Euro filter on each tracked face's pose")
    p.add_argument("--min-cutoff", type=float, default=1.0, help="One Euro min cut-off, Hz (default 1.0)")
    p.add_argument("--beta", type=float, default=0.3, help="One Euro speed coefficient (default 0.3)")
    p.add_argument("--no-annotate", action="store_true", help="write no annotated images/videos")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool("hpe-bench predict", run, parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
