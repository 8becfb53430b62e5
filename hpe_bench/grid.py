"""Run the grid behind one paper table: ``python -m hpe_bench.grid PAPER TABLE [--seeds 1,2,3] [--dry-run] [OVERRIDES]``.

The jobs are the table's runnable rows (``hpe_bench/results/<paper>.yaml``) x seeds: one training run of each
row's experiment preset per seed (``<root>/<preset>/seed<s>/``, tested on the preset's own protocol), plus,
for every other protocol the table has a column for, a test of that run's checkpoint
(``<root>/<preset>/seed<s>/test_<protocol>/``; ``train=false data=<protocol> ckpt_path=...``, the SWA
checkpoint where the recipe wrote one, else the last). Extra arguments are Hydra overrides given to every job
(e.g. ``trainer=gpu``, ``debug=default``).

Re-entrant: a job whose ``metrics.json`` exists is skipped, so running the command again runs only the jobs that
failed or never ran. Jobs run one after the other, each its own process; a failing job is logged
(``<job dir>/grid_job.log``) and the others go on (tests of a failed training run are skipped). The exit
status is 1 if any job failed. ``--dry-run`` lists the jobs and their state without running anything.
Then ``make table`` (or ``python -m hpe_bench.table <root> --paper-dir ...``) renders the table.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .results import DATA_TEST_PROTOCOL, ResultsIndexError, load_paper

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
CHECKPOINTS = ("swa.ckpt", "last.ckpt")  # preference order for testing a finished run on another protocol


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The weights a finished run was tested with: ``checkpoints/swa.ckpt`` where the recipe wrote one, else
    ``last.ckpt``, else the newest ``*.ckpt`` there (Lightning's default name); None if there is none."""
    ckpts = Path(run_dir) / "checkpoints"
    named = [ckpts / n for n in CHECKPOINTS if (ckpts / n).is_file()]
    if named:
        return named[0]
    found = sorted(ckpts.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if ckpts.is_dir() else []
    return found[-1] if found else None


@dataclass
class Job:
    preset: str
    seed: int
    protocol: str          # the protocol this job's metrics.json holds
    out_dir: Path
    overrides: list[str]
    parent: "Job | None" = None   # the training run a test job reads its checkpoint from
    state: str = "todo"    # todo | done | failed | blocked
    log: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return (self.out_dir / "metrics.json").is_file()

    def checkpoint(self) -> Path | None:
        return find_checkpoint(self.out_dir)

    def argv(self) -> list[str]:
        overrides = self.overrides
        if self.parent is not None:  # the test picks its own data option
            overrides = [o for o in overrides if not o.lstrip("+~").startswith("data=")]
        args = [f"experiment={self.preset}", f"seed={self.seed}", f"hydra.run.dir={self.out_dir}", *overrides]
        if self.parent is not None:
            ckpt = self.parent.checkpoint() or self.parent.out_dir / "checkpoints" / CHECKPOINTS[-1]
            args += [f"data={self.protocol}", "train=false", f"ckpt_path={ckpt}"]
        return args


def preset_protocol(preset: str, overrides: list[str]) -> str:
    """The protocol a preset's own test split is (its data option, mapped by ``DATA_TEST_PROTOCOL``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"experiment={preset}", *overrides], return_hydra_config=True)
    data = cfg.hydra.runtime.choices["data"]
    return DATA_TEST_PROTOCOL.get(data, data)


def plan(paper: str, table: str, seeds: list[int], root: Path, overrides: list[str],
         protocol_map: dict[str, str] | None = None, only: list[str] | None = None,
         protocol_of_preset: Callable[[str, list[str]], str] = preset_protocol) -> list[Job]:
    """Every job of the table, training runs first (in row order), each followed by its protocol tests."""
    index = load_paper(paper)
    if table not in index.tables:
        raise ResultsIndexError(f"{paper} has no table {table!r} (has: {', '.join(index.tables)})")
    t = index.tables[table]
    presets = [p for p in t.presets if not only or p in only]
    if only and (unknown := sorted(set(only) - set(t.presets))):
        raise ResultsIndexError(f"{paper} {table} has no row with preset {', '.join(unknown)} (has: {', '.join(t.presets)})")
    wanted = list(dict.fromkeys((protocol_map or {}).get(p, p) for p in t.protocols))
    jobs = []
    for preset in presets:
        own = protocol_of_preset(preset, overrides)
        for seed in seeds:
            train = Job(preset, seed, own, root / preset / f"seed{seed}", list(overrides))
            jobs.append(train)
            jobs += [Job(preset, seed, p, train.out_dir / f"test_{p}", list(overrides), parent=train)
                     for p in wanted if p != own]
    return jobs


def _subprocess_runner(job: Job) -> int:
    job.out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "hpe_bench", *job.argv()]
    with open(job.out_dir / "grid_job.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode


def run(jobs: list[Job], runner: Callable[[Job], int] = _subprocess_runner, dry_run: bool = False,
        echo: Callable[[str], None] = print) -> list[Job]:
    """Run the jobs that are not done; a failure never stops the others. Returns the jobs with their state."""
    for k, job in enumerate(jobs, 1):
        head = f"[{k}/{len(jobs)}] {job.preset} seed={job.seed} {job.protocol}"
        if job.done:
            job.state = "done"
            echo(f"{head}: done ({job.out_dir}/metrics.json)")
            continue
        if job.parent is not None and job.parent.state in ("failed", "blocked"):
            job.state = "blocked"
            echo(f"{head}: skipped, its training run failed")
            continue
        if dry_run:
            echo(f"{head}: would run  python -m hpe_bench {' '.join(job.argv())}")
            continue
        echo(f"{head}: running ...")
        try:
            code = runner(job)
        except Exception as err:  # noqa: BLE001 - one broken job must not stop the grid
            code, job.log = -1, [f"{type(err).__name__}: {err}"]
        job.state = "done" if code == 0 and job.done else "failed"
        if job.state == "failed":
            echo(f"{head}: FAILED (exit {code}); log: {job.out_dir / 'grid_job.log'}")
    return jobs


def summary(jobs: list[Job]) -> dict[str, int]:
    states = {}
    for job in jobs:
        states[job.state] = states.get(job.state, 0) + 1
    return states


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpe_bench.grid", description=__doc__.splitlines()[0])
    parser.add_argument("paper", help="opnet | trg")
    parser.add_argument("table", help="a table key of hpe_bench/results/<paper>.yaml, e.g. table1")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job (e.g. trainer=gpu)")
    parser.add_argument("--seeds", type=_seeds, default=[1, 2, 3], help="comma-separated seeds (default: 1,2,3)")
    parser.add_argument("--root", help="output root (default outputs/paper/<paper>)")
    parser.add_argument("--only", nargs="+", metavar="PRESET", help="only these rows (experiment presets)")
    parser.add_argument("--protocol", action="append", default=[], metavar="PAPER=RUN",
                        help="test on protocol RUN where the table has PAPER (e.g. arkitface=synthetic)")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs and their state; run nothing")
    args = parser.parse_intermixed_args(argv)
    protocol_map = dict(item.split("=", 1) for item in args.protocol if "=" in item)
    if len(protocol_map) != len(args.protocol):
        parser.error("--protocol expects PAPER=RUN, e.g. arkitface=synthetic")
    root = Path(args.root or Path("outputs") / "paper" / args.paper)
    try:
        jobs = plan(args.paper, args.table, args.seeds, root, args.overrides, protocol_map, args.only)
    except (ResultsIndexError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - Hydra composition errors name the bad override
        print(f"error: cannot compose a preset with overrides {args.overrides}: {err}", file=sys.stderr)
        return 2
    run(jobs, dry_run=args.dry_run)
    counts = summary(jobs)
    print(f"{len(jobs)} jobs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if not args.dry_run:
        (root).mkdir(parents=True, exist_ok=True)
        print(f"then: python -m hpe_bench.table {root} --paper {args.paper} --table {args.table} --paper-dir {root}/tables"
              + "".join(f" --protocol {k}={v}" for k, v in protocol_map.items()))
    return 1 if counts.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
