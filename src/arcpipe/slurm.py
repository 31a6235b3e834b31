"""Checks made before a Snakemake run hands its jobs to SLURM, so that a site setting that cannot
work fails once, in one line, before anything is submitted, instead of as one long sbatch error per
job and attempt.

    problem = partition_problem(jobs)          # [(rule, partition), ...] of the jobs to submit
    if problem: raise SystemExit(problem)

The Snakefile calls it from its `onstart` hook (only the main process, only a real run, only under
`--executor slurm`); it needs `sinfo` on the submitting host, as sbatch does.
"""
from __future__ import annotations

import shutil
import subprocess
from typing import Iterable, Optional

__all__ = ["cluster_partitions", "partition_problem"]

# where each kind of job gets its partition from (profiles/slurm reads them)
SETTINGS = {"train": "ARCPIPE_SLURM_GPU_PARTITION", "train_bootstrap": "ARCPIPE_SLURM_GPU_PARTITION"}
DEFAULT_SETTING = "ARCPIPE_SLURM_PARTITION"


def cluster_partitions(timeout: float = 60.0) -> Optional[set[str]]:
    """The partitions this host's SLURM knows (`sinfo`), or None where sinfo is missing or fails
    (then sbatch reports the problem itself)."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return None
    try:
        r = subprocess.run([sinfo, "--noheader", "--format=%R"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return {line.strip() for line in r.stdout.splitlines() if line.strip()}


def partition_problem(requests: Iterable[tuple[str, Optional[str]]],
                      known: Optional[set[str]] = None) -> Optional[str]:
    """One line naming the first partition asked for that the cluster lacks (with the rules that ask
    for it, the setting to change and the partitions there are), or None when all exist.

    `requests`: (rule, slurm_partition or None) per job to submit; None means the cluster's default
    partition, always fine. `known`: the cluster's partitions (default: ask sinfo)."""
    wanted: dict[str, list[str]] = {}
    for rule, part in requests:
        if part:
            rules = wanted.setdefault(str(part), [])
            if rule not in rules:
                rules.append(rule)
    if not wanted:
        return None
    if known is None:
        known = cluster_partitions()
        if known is None:
            return None
    for part, rules in wanted.items():
        if part not in known:
            settings = sorted({SETTINGS.get(r, DEFAULT_SETTING) for r in rules})
            return (f"SLURM partition {part!r} does not exist on this cluster (asked for by rule "
                    f"{', '.join(rules)}; set {' / '.join(settings)} or your profile's slurm_partition to one "
                    f"of: {', '.join(sorted(known)) or 'none listed by sinfo'})")
    return None
