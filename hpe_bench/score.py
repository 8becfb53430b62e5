"""``hpe-bench score`` / ``python -m hpe_bench.score``: score any method's predictions with hpe_bench's metrics.

    hpe-bench score preds.csv --protocol aflw2kmini --rotation euler --euler-rule opnet data.root=aflw2kmini.h5
    hpe-bench score preds.parquet --protocol synthetic --rotation quat --method mynet
    hpe-bench score --run outputs/runs/demo/<time> --report-rule opnet --ids subset.txt   # re-score a run

A predictions file (CSV or parquet) has a ``sample_id`` column and one rotation format (docs/score.md):
``R_00 .. R_22`` (row-major, head -> camera), quaternions ``qx qy qz qw`` (or ``q0..q3`` with
``--quat-order``), or ``yaw pitch roll`` with their rule (``--euler-rule`` or ``--convention hopenet``),
optionally ``tx ty tz`` (``--translation-units``). The protocol is a data option (``conf/data``) whose test
split is the ground truth; its sample ids must match the file's: missing or extra ids stop the scoring with a
list (``--allow-missing`` / ``--allow-extra`` score the rest and record them). Every value read must be a number
(else exit 2 naming column and sample) and finite (else exit 2, or ``--allow-nonfinite`` leaves that sample's
rotation or translation out and records it under ``ids.left_out``); ``tx ty tz`` come all three or none; matrices
must be rotations, reflections included in the count (``--project-rotations`` accepts rounded ones, e.g. a run
written in bf16, and records how many it projected under ``rotation_check``). Writes ``metrics.json`` and
``predictions.parquet`` as a run does (docs/outputs.md), marked ``"external": true``, under
``outputs/external/<method>/<protocol>/<time>/`` so ``make table`` lists them. Bad inputs exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from . import geometry as G
from .cli import run_tool
from .detect import InputError
from .metrics import build_metrics, compute_flat, per_sample_errors
from .outputs import check_writable, git_version, prediction_columns, write_json, write_parquet
from .protocols import protocol_card, registry

MATRIX_COLS = tuple(f"R_{i}{j}" for i in range(3) for j in range(3))
QUAT_COLS = ("qx", "qy", "qz", "qw")
EULER_COLS = ("yaw", "pitch", "roll")
T_COLS = ("tx", "ty", "tz")
PREFIXED = {**{f"pred_R_{i}{j}": f"R_{i}{j}" for i in range(3) for j in range(3)},
            "pred_t_x": "tx", "pred_t_y": "ty", "pred_t_z": "tz"}  # predictions.parquet of a run


ROT_TOL = 1e-3  # max |R^T R - I| of a matrix accepted as a rotation (float32 rounding; it is then projected)
PROJECT_LIMIT = 0.1  # --project-rotations: the largest |R^T R - I| projected (bf16 rounding reaches ~0.03)
NONFINITE_HINT = ("--allow-nonfinite scores the other samples and records the left-out ones in metrics.json "
                  "(ids.left_out)")


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"predictions file not found: {path}")
    try:
        df = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as err:  # pandas/pyarrow raise many types for a malformed file
        raise InputError(f"cannot read predictions file {path}: {err}") from err
    run_layout = any(k in df.columns for k in PREFIXED)
    df = df.rename(columns={k: v for k, v in PREFIXED.items() if k in df.columns})
    df.attrs["run_layout"] = run_layout  # a run's predictions.parquet: all-NaN pred_t_* = no translation
    if "sample_id" not in df.columns:
        raise InputError(f"{path}: no 'sample_id' column (columns: {list(df.columns)[:20]})")
    df["sample_id"] = df["sample_id"].astype(str)
    dup = df["sample_id"][df["sample_id"].duplicated()].unique().tolist()
    if dup:
        raise InputError(f"{path}: {len(dup)} sample ids appear more than once, e.g. {dup[:5]}")
    return df


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _sample(df: pd.DataFrame, row: int) -> str:
    return repr(df["sample_id"].iloc[row])


def numeric_columns(df: pd.DataFrame, cols: Sequence[str], where: str = "") -> np.ndarray:
    """``(N, len(cols))`` float64 of the named columns. A cell that is not a number (text such as "abc") raises
    ``InputError`` naming the column, how many cells and the first sample; empty cells, NaN and inf pass as
    NaN / inf (the caller decides about non-finite values)."""
    out = np.empty((len(df), len(cols)), dtype=np.float64)
    for k, col in enumerate(cols):
        s = df[col]
        if pd.api.types.is_numeric_dtype(s.dtype):
            out[:, k] = s.to_numpy(dtype=np.float64, na_value=np.nan)
            continue
        bad = []
        for i, v in enumerate(s.tolist()):  # text columns only: float() accepts "1.5", "nan", "inf", not "abc"
            try:
                out[i, k] = np.nan if v is None or (not isinstance(v, (str, bytes)) and pd.isna(v)) else float(v)
            except (TypeError, ValueError):
                bad.append(i)
        if bad:
            raise InputError(f"{where}column {col!r}: {_count(len(bad), 'value is', 'values are')} not a number, "
                             f"e.g. sample {_sample(df, bad[0])}: {s.iloc[bad[0]]!r}")
    return out


def finite_rows(df: pd.DataFrame, values: np.ndarray, cols: Sequence[str], what: str, allow: bool,
                where: str = "") -> np.ndarray:
    """``(N,)`` bool: rows whose ``cols`` are all finite. Any other row raises ``InputError`` (sample, column,
    count per column) unless ``allow`` (then the caller leaves that quantity of those samples out and records it)."""
    finite = np.isfinite(values)
    ok = finite.all(1)
    if not ok.all() and not allow:
        row = int(np.argmax(~ok))
        col = int(np.argmax(~finite[row]))
        per_col = ", ".join(f"{c}: {int((~finite[:, k]).sum())}" for k, c in enumerate(cols) if not finite[:, k].all())
        raise InputError(f"{where}{_count(int((~ok).sum()), 'sample has', 'samples have')} a non-finite {what} "
                         f"value (NaN, inf or empty; per column {per_col}), e.g. sample {_sample(df, row)} "
                         f"{cols[col]} = {values[row, col]}; {NONFINITE_HINT}")
    return ok


def check_rotations(R: torch.Tensor, ids: Sequence[str], project: bool, where: str = "") -> tuple[torch.Tensor, dict]:
    """The nearest rotations to ``R (N, 3, 3)`` after checking they are rotations, and a report for metrics.json.

    A matrix is not a rotation when ``|R^T R - I| > ROT_TOL`` (not orthonormal) or ``det < 0`` (a reflection,
    whatever its orthonormality). ``project`` (``--project-rotations``) accepts not-orthonormal matrices up to
    ``|R^T R - I| <= PROJECT_LIMIT`` (rounded rotations, e.g. a run written in bf16) and projects them; reflections
    and matrices further off are always refused.
    """
    dev = (R.transpose(-1, -2) @ R - torch.eye(3, dtype=R.dtype)).abs().amax((-1, -2))
    det = torch.linalg.det(R)
    reflection = det < 0
    skewed = (dev > ROT_TOL) & ~reflection
    near = skewed & (dev <= PROJECT_LIMIT)
    bad = reflection | (skewed & ~near) if project else reflection | skewed
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0])
        kinds = []
        if int((bad & skewed).sum()):
            kinds.append(f"{int((bad & skewed).sum())} not orthonormal, |R^T R - I| > "
                         f"{PROJECT_LIMIT if project else ROT_TOL:g}")
        if int(reflection.sum()):
            kinds.append(f"{_count(int(reflection.sum()), 'reflection', 'reflections')}, det < 0")
        msg = (f"{where}{_count(int(bad.sum()), 'matrix is not a rotation', 'matrices are not rotations')} "
               f"({'; '.join(kinds)}), e.g. sample {ids[first]!r} (|R^T R - I| = {float(dev[first]):.3g}, "
               f"det = {float(det[first]):.4g}); give R_ij row-major, head -> camera")
        if not project and int(near.sum()):
            msg += (f". {int(near.sum())} of them are within |R^T R - I| <= {PROJECT_LIMIT:g} (rotations rounded to "
                    "low precision, e.g. written by a run trained in bf16): --project-rotations projects those to "
                    "the nearest rotation and records it in metrics.json")
        raise InputError(msg)
    report = {"checked": len(R), "tolerance": ROT_TOL,
              "max_deviation": float(dev.max()) if len(R) else 0.0,
              "det_min": float(det.min()) if len(R) else None, "det_max": float(det.max()) if len(R) else None}
    if project:
        report.update(projected=int(near.sum()), project_limit=PROJECT_LIMIT,
                      projected_ids=[ids[i] for i in torch.nonzero(near).flatten().tolist()])
    return G.project_to_so3(R), report


def rotations_from_table(df: pd.DataFrame, fmt: str, *, quat_order: str | None = None, euler_rule: str | None = None,
                         convention: str | None = None, angles: str = "deg", allow_nonfinite: bool = False,
                         project: bool = False, where: str = "") -> tuple[torch.Tensor, np.ndarray, dict | None]:
    """Head -> camera rotations ``(N, 3, 3)`` float64 from the table's columns in format ``fmt``, the ``(N,)``
    mask of rows that have one, and the matrix check's report (``None`` for quaternions and angles).

    ``matrix``: ``R_00..R_22``; with ``convention="6drepnet"`` the matrices are 6DRepNet's and are converted
    (``geometry.sixdrepnet_matrix_to_matrix``); they must be rotations (``check_rotations``, ``project``).
    ``quat``: ``qx qy qz qw`` (any column order), or ``q0 q1 q2 q3`` read in ``quat_order`` ("xyzw" or "wxyz").
    ``euler``: ``yaw pitch roll`` under ``euler_rule`` or the rule of ``convention``
    (``geometry.EXTERNAL_EULER_RULES``), in ``angles`` ("deg" | "rad"). A non-number cell is an error; a
    non-finite one too unless ``allow_nonfinite`` (the row is then masked out and its rotation is NaN).
    """
    ok = np.ones(len(df), dtype=bool)

    def need(cols: Sequence[str]) -> np.ndarray:
        nonlocal ok
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise InputError(f"{where}rotation format {fmt!r} needs columns {list(cols)}; missing {missing}")
        values = numeric_columns(df, cols, where)
        ok = finite_rows(df, values, cols, f"{fmt} rotation", allow_nonfinite, where)
        return values[ok]

    def full(R: torch.Tensor) -> torch.Tensor:  # rows without a rotation are NaN
        out = torch.full((len(df), 3, 3), float("nan"), dtype=torch.float64)
        out[torch.from_numpy(ok)] = R.to(torch.float64)
        return out

    ids = df["sample_id"].tolist()
    if fmt == "matrix":
        R = torch.from_numpy(need(MATRIX_COLS)).view(-1, 3, 3)
        if convention == "6drepnet":
            R = G.sixdrepnet_matrix_to_matrix(R)
        elif convention is not None:
            raise InputError(f"--convention {convention!r} does not apply to matrices (only 6drepnet does)")
        R, report = check_rotations(R, [s for s, k in zip(ids, ok) if k], project, where)
        return full(R), ok, report
    if project:
        raise InputError(f"--project-rotations applies to matrices, not to {fmt} rotations")
    if fmt == "quat":
        if all(c in df.columns for c in QUAT_COLS):
            q = need(QUAT_COLS)
        else:
            if quat_order not in ("xyzw", "wxyz"):
                raise InputError(f"{where}quaternion columns: name them {list(QUAT_COLS)}, or give q0..q3 with "
                                 "--quat-order xyzw|wxyz")
            q = need(("q0", "q1", "q2", "q3"))
            q = q if quat_order == "xyzw" else q[:, [1, 2, 3, 0]]
        zero = np.linalg.norm(q, axis=1) < 1e-6
        if zero.any():
            first = [s for s, k in zip(ids, ok) if k][int(np.argmax(zero))]
            raise InputError(f"{where}{_count(int(zero.sum()), 'quaternion has', 'quaternions have')} zero norm, "
                             f"e.g. sample {first!r}")
        return full(G.quat_to_matrix(torch.from_numpy(q))), ok, None
    if fmt == "euler":
        rule = euler_rule or G.EXTERNAL_EULER_RULES.get(convention or "")
        if rule is None:
            raise InputError(f"{where}Euler angles need --euler-rule {{{', '.join(G.EULER_RULES)}}} or --convention "
                             f"{{{', '.join(G.EXTERNAL_EULER_RULES)}}} (unknown or missing: {convention!r})")
        if rule not in G.EULER_RULES:
            raise InputError(f"unknown Euler rule {rule!r}; choose one of {G.EULER_RULES} (docs/conventions.md)")
        ypr = need(EULER_COLS)
        if angles == "rad":
            ypr = np.degrees(ypr)
        return full(G.euler_to_matrix(torch.from_numpy(ypr), rule)), ok, None
    raise InputError(f"unknown rotation format {fmt!r}; choose matrix, quat or euler")


def detect_format(df: pd.DataFrame) -> str:
    found = [name for name, cols in (("matrix", MATRIX_COLS), ("quat", QUAT_COLS), ("euler", EULER_COLS))
             if all(c in df.columns for c in cols)]
    if "q0" in df.columns:
        found.append("quat")
    if len(set(found)) != 1:
        raise InputError(f"cannot tell the rotation format from the columns (found {sorted(set(found)) or 'none'}); "
                         f"give --rotation matrix|quat|euler with columns {list(MATRIX_COLS)}, "
                         f"{list(QUAT_COLS)} or {list(EULER_COLS)}")
    return found[0]


def translations_from_table(df: pd.DataFrame, units: str, *, allow_nonfinite: bool = False,
                            where: str = "") -> tuple[torch.Tensor | None, np.ndarray | None]:
    """Translations ``(N, 3)`` in metres (NaN where left out) and the ``(N,)`` mask of rows that have one, or
    ``(None, None)`` when the table has no translation columns.

    The columns ``tx ty tz`` come all three or not at all (a subset is an error naming the missing ones). A run's
    predictions.parquet (``pred_t_*``) holds NaN in all of them when its model predicts no translation: that is
    read as no translation. Otherwise a non-number cell is an error, and a non-finite one too unless
    ``allow_nonfinite`` (that sample's translation is then left out)."""
    present = [c for c in T_COLS if c in df.columns]
    if not present:
        return None, None
    if len(present) < len(T_COLS):
        missing = [c for c in T_COLS if c not in present]
        raise InputError(f"{where}translation needs all of {list(T_COLS)}: found {present}, missing {missing} "
                         "(drop the translation columns to score rotations only)")
    values = numeric_columns(df, T_COLS, where)
    if df.attrs.get("run_layout") and np.isnan(values).all():
        return None, None
    ok = finite_rows(df, values, T_COLS, "translation", allow_nonfinite, where)
    t = torch.from_numpy(values)
    t[torch.from_numpy(~ok)] = float("nan")
    return (t / 1000.0 if units == "mm" else t), ok


def match_ids(pred_ids: Sequence[str], gt_ids: Sequence[str], allow_missing: bool, allow_extra: bool,
              where: str) -> dict[str, Any]:
    """Compare id lists; raise ``InputError`` listing missing / extra ids unless allowed. Never drops silently:
    the returned report goes into metrics.json."""
    pred, gt = set(pred_ids), set(gt_ids)
    missing = sorted(gt - pred)
    extra = sorted(pred - gt)
    problems = []
    if missing and not allow_missing:
        problems.append(f"{len(missing)} protocol ids have no prediction, e.g. {missing[:5]} (--allow-missing "
                        "scores the others)")
    if extra and not allow_extra:
        problems.append(f"{len(extra)} predicted ids are not in the protocol, e.g. {extra[:5]} (--allow-extra "
                        "ignores them)")
    if problems:
        raise InputError(f"{where}: " + "; ".join(problems))
    return {"protocol": len(gt), "scored": len(gt & pred), "missing": missing, "extra": extra}


def _select(batch: dict[str, Any], idx: list[int]) -> dict[str, Any]:
    ix = torch.as_tensor(idx, dtype=torch.long)
    return {k: (v[ix] if torch.is_tensor(v) else [v[i] for i in idx] if isinstance(v, list) else v)
            for k, v in batch.items()}


def protocol_batches(protocol: str, overrides: Sequence[str], batch_size: int = 64) -> tuple[Iterator, str]:
    """Collated batches of the protocol's test split, and its default Euler rule (the data option's)."""
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from .export import compose_config
    from .schema import collate
    try:
        cfg = compose_config([f"data={protocol}", *overrides])
    except HydraException as err:
        options = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "data").glob("*.yaml"))
        raise InputError(f"unknown protocol or override ({err}); protocols are the data options: {options}") from err
    try:
        dm = instantiate(cfg.data)
        test = dm.datasets["test"]
        if test is None:
            raise InputError(f"protocol {protocol!r} has no test split (data.test)")
        if hasattr(test, "prepare"):  # the test split only (prepare_data would also build train/val caches)
            test.prepare()
    except InputError:
        raise
    except Exception as err:  # a dataset that cannot be found or read names its root and env var
        raise InputError(f"protocol {protocol!r}: cannot load its test split: {err}") from err
    loader = DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate)
    return iter(loader), dm.euler_rule


def parquet_batches(df: pd.DataFrame, batch_size: int = 256, where: str = "") -> Iterator[dict[str, Any]]:
    """Ground-truth batches from a run's predictions.parquet (``gt_R_*``, ``gt_t_*``): rotation and translation
    labels only (ADD, NME and dense metrics need the dataset). A sample whose GT is NaN has no such label (as the
    run wrote it; the metrics' counts show it)."""
    cols = [f"gt_R_{i}{j}" for i in range(3) for j in range(3)]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"{where}not a run's predictions.parquet: no ground-truth columns {missing}")
    gt_R = numeric_columns(df, cols, where).reshape(-1, 3, 3)
    t_cols = [f"gt_t_{a}" for a in "xyz"]
    gt_t = numeric_columns(df, t_cols, where) if all(c in df for c in t_cols) else np.full((len(df), 3), np.nan)
    for s in range(0, len(df), batch_size):
        R, t = torch.from_numpy(gt_R[s:s + batch_size]), torch.from_numpy(gt_t[s:s + batch_size])
        hR, ht = torch.isfinite(R).flatten(1).all(1), torch.isfinite(t).all(1)
        B = len(R)
        yield {"sample_id": df["sample_id"].iloc[s:s + B].tolist(), "dataset": df.get("dataset", pd.Series(
            [""] * len(df))).iloc[s:s + B].tolist(), "R": torch.nan_to_num(R).float(), "has_R": hR,
            "t": torch.nan_to_num(t).float(), "has_t": ht, "vertices": torch.zeros(B, 0, 3),
            "vertices_mask": torch.zeros(B, 0, dtype=torch.bool), "has_vertices": torch.zeros(B, dtype=torch.bool),
            "topology": [""] * B}


def score(batches: Iterator[dict[str, Any]], pred_R: dict[str, torch.Tensor], pred_t: dict[str, torch.Tensor] | None,
          euler_rule: str, keep: set[str] | None = None) -> tuple[dict[str, Any] | None, pd.DataFrame]:
    """Metrics (``compute_flat`` keys) and the per-sample table over the GT samples with a prediction
    (``None`` and an empty table when there is none).

    A sample may have a rotation, a translation or both (``--allow-nonfinite`` leaves one out): each metric
    counts the samples it could score (``count_rotation``, ``count_translation``); the table has a row for every
    sample with either, NaN where one is absent."""
    metrics = build_metrics(euler_rule)
    pred_t = pred_t or {}
    frames = []
    for batch in batches:
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i, s in enumerate(batch["sample_id"]):
            key = (s in pred_R, s in pred_t)
            if any(key) and (keep is None or s in keep):
                groups.setdefault(key, []).append(i)
        for (has_R, has_t), idx in groups.items():
            sub = _select(batch, idx)
            ids = sub["sample_id"]
            pred = {}
            if has_R:
                pred["R"] = torch.stack([pred_R[s] for s in ids])
            if has_t:
                pred["t"] = torch.stack([pred_t[s] for s in ids])
            metrics.update(pred, sub)
            frames.append(pd.DataFrame(prediction_columns(pred, sub, per_sample_errors(pred, sub, euler_rule))))
    if not frames:
        return None, pd.DataFrame()
    values = {k: v for k, v in compute_flat(metrics).items() if not (isinstance(v, float) and math.isnan(v))}
    frame = pd.concat(frames, ignore_index=True).sort_values("sample_id", kind="stable").reset_index(drop=True)
    values["num_samples"] = int(len(frame))
    return values, frame


def read_ids(path: str | None) -> set[str] | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise InputError(f"ids file not found: {p}")
    ids = {line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")}
    if not ids:
        raise InputError(f"ids file {p} lists no id")
    return ids


def run(args: argparse.Namespace) -> dict[str, Any]:
    subset = read_ids(args.ids)
    if args.run:
        run_dir = Path(args.run)
        where = str(run_dir / "predictions.parquet")
        df = read_table(where)
        try:
            old = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"cannot read {run_dir / 'metrics.json'}: {err}") from err
        old = old if isinstance(old, dict) else {}
        fmt = "matrix"
    else:
        if not args.predictions or not args.protocol:
            raise InputError("give a predictions file and --protocol NAME, or --run RUN_DIR")
        where = str(args.predictions)
        df = read_table(args.predictions)
        fmt = args.rotation if args.rotation != "auto" else detect_format(df)
    # parse every prediction before touching the ground truth (a protocol's test split may take minutes to
    # prepare): a format error fails fast
    R, has_R, rotation_check = rotations_from_table(
        df, fmt, quat_order=args.quat_order, euler_rule=args.euler_rule, convention=args.convention,
        angles=args.angles, allow_nonfinite=args.allow_nonfinite, project=args.project_rotations, where=f"{where}: ")
    t, has_t = translations_from_table(df, args.translation_units, allow_nonfinite=args.allow_nonfinite,
                                       where=f"{where}: ")
    sample_ids = df["sample_id"].tolist()
    pred_R = {s: r for s, r, k in zip(sample_ids, R, has_R) if k}
    pred_t = None if t is None else {s: v for s, v, k in zip(sample_ids, t, has_t) if k}
    if args.run:
        rule = args.report_rule or old.get("euler_convention") or "trg"
        protocol, method = old.get("data") or "run", old.get("model") or "run"
        card = old.get("protocol")  # the run's protocol card, kept (hpe_bench/protocols)
        if isinstance(card, dict) and card.get("name"):
            protocol = card["name"]
        experiment = f"{old.get('experiment') or 'run'} (rescored)"
        batches = parquet_batches(df, where=f"{where}: ")
        source = {"run_dir": str(run_dir), "file": where}
    else:
        # a registered protocol (hpe_bench/protocols) is its data option plus its overrides; else a data option
        entry = registry().get(args.protocol)
        card = None
        if entry is not None:
            batches, default_rule = protocol_batches(entry.data, [*entry.overrides, *args.overrides])
        else:
            batches, default_rule = protocol_batches(args.protocol, args.overrides)
        rule = args.report_rule or default_rule
        protocol, method = args.protocol, args.method or Path(args.predictions).stem
        experiment = "external"
        source = {"file": where, "rotation": fmt, "quat_order": args.quat_order,
                  "euler_rule": args.euler_rule, "convention": args.convention, "angles": args.angles,
                  "translation_units": args.translation_units}
    source.update(allow_nonfinite=args.allow_nonfinite, project_rotations=args.project_rotations)
    G.check_rule(rule)
    gt_ids: list[str] = []

    def tapped(batches):  # one pass over the ground truth: its ids are collected while scoring
        for batch in batches:
            gt_ids.extend(batch["sample_id"])
            yield batch
    values, frame = score(tapped(batches), pred_R, pred_t, rule, subset)
    if subset is not None:
        unknown = sorted(subset - set(gt_ids))
        if unknown:
            raise InputError(f"--ids: {len(unknown)} ids are not in the protocol, e.g. {unknown[:5]}")
        gt_ids = [s for s in gt_ids if s in subset]
    ids = match_ids(sample_ids if subset is None else [s for s in sample_ids if s in subset],
                    gt_ids, args.allow_missing, args.allow_extra or subset is not None, where)
    # samples of the protocol (and subset) whose rotation / translation --allow-nonfinite left out
    scored_ids = set(gt_ids)
    left_out = {"rotation": sorted(s for s, k in zip(sample_ids, has_R) if not k and s in scored_ids)}
    if has_t is not None:
        left_out["translation"] = sorted(s for s, k in zip(sample_ids, has_t) if not k and s in scored_ids)
    left_out = {k: {"count": len(v), "ids": v} for k, v in left_out.items()}
    if values is None:
        raise InputError(f"{where}: no sample to score (no predicted id is in the protocol's test split"
                         + (", or all their values are non-finite)" if args.allow_nonfinite else ")"))
    ids["scored"] = values["num_samples"]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(args.out) if args.out else (run_dir / "rescore" / f"{rule}_{stamp}" if args.run
                                           else Path("outputs/external") / method / protocol / stamp)
    check_writable(out, "--out")
    record = dict(values)
    record.update({"euler_convention": rule, "experiment": experiment, "external": True, "seed": None,
                   "model": method, "data": protocol, "loss": None,
                   "protocol": card if card is not None else protocol_card(
                       protocol, record.get("num_samples"), name=protocol if protocol in registry() else None),
                   "ids": {**ids, "left_out": left_out, "subset_file": args.ids}, "source": source,
                   "rotation_check": rotation_check, "git": git_version(),
                   "scored_utc": datetime.now(timezone.utc).isoformat(), "command": sys.argv})
    write_parquet(out / "predictions.parquet", frame)
    write_json(out / "metrics.json", record)
    summary = {"out": str(out), **{k: record[k] for k in ("geodesic_deg", "mae_r_deg", "num_samples") if k in record},
               "euler_convention": rule, "missing": len(ids["missing"]), "extra": len(ids["extra"])}
    summary.update({f"left_out_{k}": v["count"] for k, v in left_out.items() if v["count"]})
    if rotation_check and rotation_check.get("projected"):
        summary["projected_rotations"] = rotation_check["projected"]
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpe-bench score", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:5]))
    p.add_argument("predictions", nargs="?", help="CSV or parquet with sample_id and a rotation per row")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the protocol's data config, e.g. data.root=...")
    p.add_argument("--protocol", help="the data option whose test split is the ground truth (conf/data/*.yaml)")
    p.add_argument("--run", help="re-score an existing run directory's predictions.parquet instead")
    p.add_argument("--rotation", default="auto", choices=("auto", "matrix", "quat", "euler"))
    p.add_argument("--quat-order", choices=("xyzw", "wxyz"), help="order of columns q0..q3")
    p.add_argument("--euler-rule", help=f"rule of yaw/pitch/roll columns: {', '.join(G.EULER_RULES)}")
    p.add_argument("--convention", help=f"a method's convention: {', '.join(sorted(G.EXTERNAL_EULER_RULES))} "
                   "(docs/score.md)")
    p.add_argument("--angles", default="deg", choices=("deg", "rad"))
    p.add_argument("--translation-units", default="m", choices=("m", "mm"))
    p.add_argument("--report-rule", help="Euler rule of the per-axis metrics (default: the protocol's)")
    p.add_argument("--ids", help="score only the ids listed in this file (one per line)")
    p.add_argument("--allow-missing", action="store_true", help="score although protocol ids lack a prediction")
    p.add_argument("--allow-extra", action="store_true", help="ignore predicted ids the protocol does not have")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="score although some rotation/translation values are NaN, inf or empty: those samples' "
                   "rotation (or translation) is left out and listed in metrics.json (ids.left_out)")
    p.add_argument("--project-rotations", action="store_true",
                   help=f"matrices: project near-rotations (|R^T R - I| <= {PROJECT_LIMIT:g}, det > 0; e.g. a run "
                   "written in bf16) to the nearest rotation, recorded in metrics.json (rotation_check)")
    p.add_argument("--method", help="method name recorded as 'model' (default: the file name)")
    p.add_argument("--out", help="output folder (default outputs/external/<method>/<protocol>/<time>)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool("hpe-bench score", run, parser().parse_intermixed_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
