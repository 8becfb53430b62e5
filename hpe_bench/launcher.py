"""``hydra/launcher=slurm`` (Hydra's submitit ``SlurmLauncher``) on a cluster that keeps no accounting database
(docs/cluster.md): ``jobs.RunGuard.on_multirun_start`` calls ``use_squeue_without_accounting`` in the submitting
process before the launcher submits anything.

submitit learns a job's state from ``sacct``. A cluster without ``slurmdbd`` (a single-node SLURM on a
workstation, ``scripts/single_node_slurm.sh``) answers ``sacct`` with "Slurm accounting storage is disabled":
submitit then warns at every poll and sees every job as ``UNKNOWN``, so a job that ended without writing its
result (``scancel``, killed, node failure) would be waited for forever. There, job states come from ``squeue -t
all`` instead, which lists ended jobs for ``MinJobAge`` (300 s by default) after their end.
"""
from __future__ import annotations

import logging
import subprocess

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger(__name__)
HEADER = "JobID|State|NodeList"  # sacct --parsable2's header, which SlurmInfoWatcher.read_info parses


class SqueueInfoWatcher(SlurmInfoWatcher):
    """submitit's job watcher reading ``squeue -t all`` (same ``JobID|State|NodeList`` lines as ``sacct``)."""

    def _make_command(self) -> list[str] | None:
        to_check = sorted({x.split("_")[0] for x in self._registered - self._finished})
        if not to_check:
            return None
        return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N", f"--jobs={','.join(to_check)}"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        lines = [line for line in text.splitlines() if line.strip()]
        return super().read_info("\n".join([HEADER, *lines])) if lines else {}


def accounting_available() -> bool:
    """Whether ``sacct`` answers (an accounting database behind the cluster)."""
    try:
        return subprocess.run(["sacct", "--noheader", "-X", "-j", "1"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def use_squeue_without_accounting() -> bool:
    """Make submitit read job states from ``squeue`` when ``sacct`` has no database; True when it does so."""
    if isinstance(SlurmJob.watcher, SqueueInfoWatcher):
        return True
    if accounting_available():
        return False
    log.info("sacct: no accounting database on this cluster; following the jobs with squeue")
    SlurmJob.watcher = SqueueInfoWatcher(delay_s=30)
    return True
