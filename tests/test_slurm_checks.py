"""The checks made before a Snakemake run submits to SLURM (arcpipe.slurm), without a cluster: the
real one is in test_slurm.py."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from arcpipe.slurm import cluster_partitions, partition_problem


def test_every_partition_known_or_the_default_is_no_problem():
    assert partition_problem([("detect_part", "cpu"), ("train", "gpu")], known={"cpu", "gpu", "debug"}) is None
    assert partition_problem([("detect_part", None), ("sample", "")], known=set()) is None
    assert partition_problem([], known=set()) is None


def test_a_missing_partition_is_one_line_naming_it_its_rules_and_the_setting():
    msg = partition_problem([("detect_part", "cpuq"), ("align_part", "cpuq"), ("detect_part", "cpuq"),
                             ("train", "gpu")], known={"cpu", "gpu"})
    assert "\n" not in msg
    assert msg.startswith("SLURM partition 'cpuq' does not exist on this cluster")
    assert "rule detect_part, align_part;" in msg and "ARCPIPE_SLURM_PARTITION" in msg
    assert msg.endswith("one of: cpu, gpu)")
    msg = partition_problem([("detect_part", "cpu"), ("train_bootstrap", "a100"), ("train", "a100")],
                            known={"cpu", "gpu"})
    assert "'a100'" in msg and "rule train_bootstrap, train;" in msg and "ARCPIPE_SLURM_GPU_PARTITION" in msg


def _fake_sinfo(folder: Path, body: str) -> None:
    folder.mkdir(exist_ok=True)
    exe = folder / "sinfo"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)


def test_the_partitions_come_from_sinfo_and_a_failing_sinfo_leaves_it_to_sbatch(tmp_path, monkeypatch):
    # a real executable on PATH that prints what `sinfo --noheader --format=%R` prints
    _fake_sinfo(tmp_path / "ok", 'test "$1 $2" = "--noheader --format=%R" || exit 2\nprintf "debug\\ngpu\\n\\n"')
    monkeypatch.setenv("PATH", f"{tmp_path / 'ok'}{os.pathsep}/usr/bin:/bin")
    assert cluster_partitions() == {"debug", "gpu"}
    assert "one of: debug, gpu" in partition_problem([("sample", "cpu")])
    _fake_sinfo(tmp_path / "bad", 'echo "slurm_load_partitions: Unable to contact slurm controller" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bad'}{os.pathsep}/usr/bin:/bin")
    assert cluster_partitions() is None and partition_problem([("sample", "cpu")]) is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cluster_partitions() is None
