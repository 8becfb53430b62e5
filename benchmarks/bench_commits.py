"""Training-step speed of this checkout against an earlier commit, side by side on one machine in one command:
``git worktree`` of ``--base``, then rounds alternating ``bench_train.py`` in the base (its default, float32
path) and in this checkout (the speed switches), each round one process per side, medians over rounds.

    python benchmarks/bench_commits.py --base HEAD~1 --models opnet,trg --head-variant bf16+cl+fused
    python benchmarks/bench_commits.py --base 518991c --models opnet --batch 64 --rounds 3

Both sides use the same batch size, thread count, synthetic batch and initial weights (bench_train's fixed
batch and seed), so the ratio is the speed-up a user gets by updating and switching on the options. The base
side runs the variant ``--base-variant`` (default ``fp32``, a name every version of bench_train knows); this
checkout's side runs with the allocator settings its runs apply (``--head-malloc tuned``, conf/config.yaml).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_side(tree: pathlib.Path, model: str, variant: str, args, out: pathlib.Path, extra: tuple = ()) -> float:
    """img/s of one ``bench_train`` process in ``tree`` (its own hpe_bench: the script puts its tree first)."""
    cmd = [sys.executable, str(tree / "benchmarks" / "bench_train.py"), "--models", model, "--variants", variant,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--json", str(out), *extra]
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_train failed in {tree}:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())["train_step"][0]["variants"][variant]["img_per_s"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the commit to compare against (any git revision)")
    p.add_argument("--models", default="opnet,trg")
    p.add_argument("--base-variant", default="fp32")
    p.add_argument("--head-variant", default="bf16+cl+fused+dw32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--head-malloc", choices=("glibc", "tuned"), default="tuned",
                   help="this checkout's allocator: tuned, as its runs apply it (conf/config.yaml malloc), or glibc's")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rev = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = pathlib.Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), rev], cwd=ROOT, check=True,
                       capture_output=True)
        cache = ROOT / ".cache"
        if cache.exists():  # the rendered synthetic batch, shared (same generator, same bytes)
            (base_tree / ".cache").symlink_to(cache)
        try:
            for m in args.models.split(","):
                speeds = {"base": [], "head": []}
                for r in range(args.rounds):  # alternate the sides so that load drifts hit both alike
                    speeds["base"].append(run_side(base_tree, m, args.base_variant, args, pathlib.Path(tmp) / "b.json"))
                    speeds["head"].append(run_side(ROOT, m, args.head_variant, args, pathlib.Path(tmp) / "h.json",
                                                   ("--malloc", args.head_malloc)))
                b, h = float(np.median(speeds["base"])), float(np.median(speeds["head"]))
                results[m] = {"base_img_per_s": b, "head_img_per_s": h, "speedup": h / b, "rounds": speeds}
                print(f"{m:<20} {rev} {args.base_variant}: {b:8.1f} img/s   {head}+ {args.head_variant} "
                      f"(malloc {args.head_malloc}): {h:8.1f} img/s"
                      f"   {h / b:5.2f}x")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
    out = {"base": rev, "head": head, "base_variant": args.base_variant, "head_variant": args.head_variant,
           "head_malloc": args.head_malloc,
           "batch": args.batch, "threads": args.threads, "models": results}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
