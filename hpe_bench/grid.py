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

``--launcher slurm`` submits the table instead (docs/cluster.md): one job per row x seed, each testing itself on
every protocol of the table's columns (``test_on=[...]``: ``<root>/<preset>/seed<s>/metrics/<protocol>.json``),
as Hydra multiruns through the submitit launcher (``hydra/launcher=slurm``; ``hydra.launcher.*`` overrides go
to it): ``hydra.sweep.dir=<root>``, ``hydra.sweep.subdir=<preset>/seed<s>``, so a requeued job finds its run
directory and this command, run again, sees which jobs finished. Before anything is queued every job's config,
dataset roots (training and each test protocol) and pretrained weights are checked, all problems named in one
message; then one preparation job builds the caches that the table's jobs depend on (``--no-prepare``: none).
The command waits for its jobs (submitit polls the queue); a job that fails leaves ``failure.json`` in its
directory and the others go on; running the command again resubmits only the unfinished jobs.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .results import DATA_TEST_PROTOCOL, ResultsIndexError, load_paper

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
LAUNCHERS = ("local", "slurm")
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
    test_on: tuple[str, ...] = ()  # --launcher slurm: the protocols the run tests itself on (metrics/<p>.json)
    data: str | None = None        # its data option, once composed (``check``)

    @property
    def metrics_files(self) -> list[Path]:
        if self.test_on:
            return [self.out_dir / "metrics" / f"{p}.json" for p in self.test_on]
        return [self.out_dir / "metrics.json"]

    @property
    def done(self) -> bool:
        return all(p.is_file() for p in self.metrics_files)

    def checkpoint(self) -> Path | None:
        return find_checkpoint(self.out_dir)

    def argv(self) -> list[str]:
        overrides = self.overrides
        if self.parent is not None:  # the test picks its own data option
            overrides = [o for o in overrides if not o.lstrip("+~").startswith("data=")]
        args = [f"experiment={self.preset}", f"seed={self.seed}", f"hydra.run.dir={self.out_dir}", *overrides]
        if self.test_on:
            args.append(f"test_on=[{','.join(self.test_on)}]")
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
         protocol_of_preset: Callable[[str, list[str]], str] = preset_protocol,
         test_on: bool = False) -> list[Job]:
    """Every job of the table, training runs first (in row order), each followed by its protocol tests; with
    ``test_on`` one job per row x seed that tests itself on every protocol of the table (``--launcher slurm``)."""
    index = load_paper(paper)
    if table not in index.tables:
        raise ResultsIndexError(f"{paper} has no table {table!r} (has: {', '.join(index.tables)})")
    t = index.tables[table]
    presets = [p for p in t.presets if not only or p in only]
    if only and (unknown := sorted(set(only) - set(t.presets))):
        raise ResultsIndexError(f"{paper} {table} has no row with preset {', '.join(unknown)} (has: {', '.join(t.presets)})")
    wanted = list(dict.fromkeys((protocol_map or {}).get(p, p) for p in t.protocols))
    jobs = []
    if test_on:
        return [Job(preset, seed, wanted[0], root / preset / f"seed{seed}", list(overrides), test_on=tuple(wanted))
                for preset in presets for seed in seeds]
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


def check(jobs: list[Job], launcher: str = "slurm") -> list[str]:
    """What would stop the unfinished jobs, found before any is queued: each row's config composed as its job
    will be, every value resolved, every dataset root of its training data and of each test protocol present.
    One line per problem (the rows it concerns in brackets), each missing root with its environment variable."""
    from hydra import compose, initialize_config_dir

    from .jobs import _runtime
    from .preflight import UserError, check_config, check_test_on, missing_data_roots
    found: dict[str, list[str]] = {}
    todo = [j for j in jobs if not j.done and j.parent is None]
    for preset in dict.fromkeys(j.preset for j in todo):
        job = next(j for j in todo if j.preset == preset)
        problems = []
        try:
            with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
                args = job.argv()[:2] + job.argv()[3:]  # all but hydra.run.dir, with the launcher's overrides
                composed = compose("config", overrides=[f"hydra/launcher={launcher}", *args],
                                   return_hydra_config=True)
            # as in the job: ${hydra:runtime.output_dir} -> its directory, its Hydra choices (debug=...) known
            with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)), \
                    _runtime(composed, str(job.out_dir)) as cfg:
                check_config(cfg)
                for same in (j for j in todo if j.preset == preset):
                    same.data = str(cfg.hydra.runtime.choices.get("data"))
                problems += missing_data_roots(cfg)
                for protocol in job.test_on:
                    one = cfg.copy()
                    one.test_on = [protocol]
                    try:
                        check_test_on(one)
                    except UserError as err:
                        problems.append(f"test protocol {protocol}: {err}")
                problems += missing_pretrained(cfg)
        except UserError as err:
            problems.append(str(err))
        except Exception as err:  # noqa: BLE001 - Hydra composition errors name the bad override
            problems.append(f"cannot compose experiment={preset} with {job.overrides}: {err}")
        for problem in problems:
            found.setdefault(problem.split("\nexpected layout:")[0], []).append(preset)
    return [f"{problem} [{', '.join(presets)}]" for problem, presets in found.items()]


def _pretrained_backbones(node: Any, key: str = "model") -> list[tuple[str, str]]:
    """(config key, timm backbone name) of every constructed node under ``node`` with ``pretrained: true``."""
    found = []
    if isinstance(node, dict):
        if node.get("pretrained") is True and "_target_" in node:
            name = node.get("backbone")
            if name is None:
                import inspect

                from hydra.utils import get_class
                param = inspect.signature(get_class(node["_target_"])).parameters.get("backbone")
                name = None if param is None else param.default
            if isinstance(name, str):
                found.append((f"{key}.pretrained", name))
        for k, v in node.items():
            found += _pretrained_backbones(v, f"{key}.{k}")
    return found


def missing_pretrained(cfg: Any) -> list[str]:
    """A run that wants pretrained weights which are not in this machine's cache: on a compute node without
    network it would fall back to random init with a warning, a silent change of recipe."""
    from omegaconf import OmegaConf

    from .models.backbones import pretrained_cached
    model = OmegaConf.to_container(cfg.model, resolve=True) if "model" in cfg else {}
    return [f"{key}=true wants the ImageNet weights of timm model {name!r}, which are not in this machine's cache "
            f"(a compute node without network would train from random init): fetch them once with "
            f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` (HF_HOME on a file "
            f"system the nodes see) or pass {key}=false"
            for key, name in _pretrained_backbones(model) if not pretrained_cached(name)]


def multirun_commands(jobs: list[Job], root: Path, overrides: list[str], launcher: str = "slurm") -> list[list[str]]:
    """The Hydra multiruns that run the unfinished ``test_on`` jobs: one per set of seeds that its rows still
    need (a fresh table: one multirun, one job array), each ``experiment=<rows> seed=<seeds>`` into
    ``<root>/<preset>/seed<s>``."""
    todo = [j for j in jobs if not j.done]
    seeds_of: dict[str, list[int]] = {}
    for job in todo:
        seeds_of.setdefault(job.preset, []).append(job.seed)
    groups: dict[tuple[int, ...], list[str]] = {}
    for preset, seeds in seeds_of.items():
        groups.setdefault(tuple(seeds), []).append(preset)
    commands = []
    for seeds, presets in groups.items():
        first = next(j for j in todo if j.preset == presets[0])
        commands.append([sys.executable, "-m", "hpe_bench", "-m", f"hydra/launcher={launcher}",
                         f"experiment={','.join(presets)}", f"seed={','.join(str(s) for s in seeds)}",
                         f"test_on=[{','.join(first.test_on)}]", f"hydra.sweep.dir={root}",
                         "hydra.sweep.subdir=${hydra.runtime.choices.experiment}/seed${seed}", *overrides])
    return commands


def _not_hydra(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.lstrip("+~").startswith("hydra")]


def prepare_commands(jobs: list[Job]) -> list[list[str]]:
    """``python -m hpe_bench.prepare`` for the data the unfinished jobs read: each row's training data (its
    train/val/test splits) and each test protocol's data (test split), so that the caches are built once."""
    from .protocols import registry
    todo = [j for j in jobs if not j.done and j.parent is None]
    if not todo:
        return []
    overrides = _not_hydra(todo[0].overrides)
    prep = [sys.executable, "-m", "hpe_bench.prepare"]
    # one row per data option (rows that share it read the same caches; ``data`` is known after ``check``)
    rows = {(j.data or j.preset): j.preset for j in reversed(todo)}
    commands = [[*prep, f"experiment={preset}", *overrides] for preset in reversed(rows.values())]
    for name in dict.fromkeys(p for j in todo for p in j.test_on):
        proto = registry()[name]
        if proto.data in rows and not proto.overrides:
            continue  # its test split was prepared with that row's data
        rest = [o for o in overrides if not o.lstrip("+~").startswith("data")]
        commands.append([*prep, "--splits", "test", *rest, f"data={proto.data}", *proto.overrides])
    return commands


def launcher_settings(overrides: list[str], launcher: str = "slurm") -> dict[str, Any]:
    """The launcher's resolved settings (``conf/hydra/launcher/<launcher>.yaml`` + the ``hydra.launcher.*``
    overrides), for the preparation job."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}", *overrides], return_hydra_config=True)
    node = cfg.hydra.launcher
    keys = ("partition", "account", "qos", "cpus_per_task", "mem_gb", "timeout_min", "setup")
    return {k: OmegaConf.to_container(node, resolve=True).get(k) for k in keys if k in node}


def submit_prepare(commands: list[list[str]], root: Path, settings: dict[str, Any]) -> str:
    """One SLURM job running ``commands`` one after the other; returns its job id (``sbatch --parsable``)."""
    import shlex
    lines = [*(settings.get("setup") or []), f"cd {shlex.quote(str(Path.cwd()))}",
             *(" ".join(shlex.quote(a) for a in c) + " || exit $?" for c in commands)]
    (root / ".submitit").mkdir(parents=True, exist_ok=True)
    sbatch = ["sbatch", "--parsable", "--job-name=hpe_bench_prepare", f"--output={root}/.submitit/prepare_%j.log",
              f"--time={settings.get('timeout_min') or 60}"]
    for key, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"),
                      ("cpus_per_task", "cpus-per-task")):
        if settings.get(key):
            sbatch.append(f"--{flag}={settings[key]}")
    if settings.get("mem_gb"):
        sbatch.append(f"--mem={settings['mem_gb']}G")
    try:
        proc = subprocess.run([*sbatch, "--wrap", "\n".join(lines)], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f"sbatch of the preparation job failed: {err}") from err
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch of the preparation job failed: {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


def submit(jobs: list[Job], root: Path, overrides: list[str], launcher: str = "slurm",
           echo: Callable[[str], None] = print, prepare: bool = True) -> list[Job]:
    """Submit the caches' preparation as one job (``prepare``), then run ``multirun_commands`` side by side, each
    waiting for its job array, whose jobs start once the preparation succeeded (``--dependency=afterok``; they
    are cancelled if it fails). Every job's state then comes from its files: ``done`` (all its metrics files),
    ``failed`` (its ``failure.json``, or no metrics: killed, cancelled)."""
    from .jobs import FAILURE_FILE
    for job in jobs:
        if job.done:
            job.state = "done"
    if not multirun_commands(jobs, root, overrides, launcher):
        return jobs
    root.mkdir(parents=True, exist_ok=True)
    job_id = None
    if prepare and launcher == "slurm":
        job_id = submit_prepare(prepare_commands(jobs), root, launcher_settings(overrides, launcher))
        echo(f"preparing the caches once: SLURM job {job_id} (log: {root}/.submitit/prepare_{job_id}.log)")
        overrides = [*overrides, f'++hydra.launcher.additional_parameters.dependency="afterok:{job_id}"',
                     "++hydra.launcher.additional_parameters.kill-on-invalid-dep=yes"]
    commands = multirun_commands(jobs, root, overrides, launcher)
    procs = []
    for cmd in commands:
        echo("submitting: " + " ".join(cmd[1:]))
        procs.append(subprocess.Popen(cmd))
    codes = [p.wait() for p in procs]
    for job in jobs:
        if job.state == "done":
            continue
        job.state = "done" if job.done else "failed"
        if job.state == "failed":
            failure = job.out_dir / FAILURE_FILE
            why = f"see {failure}" if failure.is_file() else "no metrics (killed, cancelled or not started; its log: " \
                f"{root}/.submitit/<job id>/)"
            echo(f"{job.preset} seed={job.seed}: FAILED, {why}")
    if any(codes) and not summary(jobs).get("failed"):
        echo(f"the multirun exited with {codes}")
    if job_id is not None and summary(jobs).get("failed"):
        state = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%T", f"--jobs={job_id}"],
                               capture_output=True, text=True).stdout.strip()
        if state and state != "COMPLETED":
            echo(f"the preparation job {job_id} ended {state}: its log {root}/.submitit/prepare_{job_id}.log")
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
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: one job after the other on this machine (default); slurm: submit every job "
                             "through Hydra's submitit launcher (hydra.launcher.* overrides go to it)")
    parser.add_argument("--no-prepare", action="store_true",
                        help="--launcher slurm: no preparation job before the runs (the caches exist already)")
    args = parser.parse_intermixed_args(argv)
    protocol_map = dict(item.split("=", 1) for item in args.protocol if "=" in item)
    if len(protocol_map) != len(args.protocol):
        parser.error("--protocol expects PAPER=RUN, e.g. arkitface=synthetic")
    root = Path(args.root or Path("outputs") / "paper" / args.paper)
    queued = args.launcher != "local"
    try:
        jobs = plan(args.paper, args.table, args.seeds, root, args.overrides, protocol_map, args.only, test_on=queued)
    except (ResultsIndexError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - Hydra composition errors name the bad override
        print(f"error: cannot compose a preset with overrides {args.overrides}: {err}", file=sys.stderr)
        return 2
    if queued:
        problems = check(jobs, args.launcher)
        if problems:
            print(f"error: {len(problems)} problem(s) would stop jobs of {args.paper} {args.table}; nothing was "
                  f"submitted:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
            import re
            variables = sorted(set(re.findall(r"environment variable (\w+)", "\n".join(problems))))
            if variables:
                print(f"dataset roots to set: {', '.join(variables)} (docs/datasets.md)", file=sys.stderr)
            return 2
        if args.dry_run:
            run(jobs, dry_run=True)
            if not args.no_prepare and multirun_commands(jobs, root, args.overrides, args.launcher):
                for cmd in prepare_commands(jobs):
                    print("would prepare (one job, first): " + " ".join(cmd[1:]))
            for cmd in multirun_commands(jobs, root, args.overrides, args.launcher):
                print("would submit: " + " ".join(cmd[1:]))
        else:
            try:
                submit(jobs, root, args.overrides, args.launcher, prepare=not args.no_prepare)
            except RuntimeError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
    else:
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
