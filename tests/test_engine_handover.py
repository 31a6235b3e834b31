"""The two engines share one work tree and never serve each other stale results.

Snakemake has no metadata for outputs that `dvc repro` built, so every rule also takes
.snakemake/arcpipe/sections/<stage>.json (workflow/rules/common.smk): the values of the params
that dvc.yaml's stage tracks, rewritten only when they change, and checked against dvc.lock when
the outputs are not Snakemake's own. DVC compares dvc.lock's params and hashes itself.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dagspec import dvc_stages
from test_e2e import clone, run

REPO = Path(__file__).resolve().parents[1]
SECTIONS = Path(".snakemake/arcpipe/sections")
TRIGGERS = ["--rerun-triggers", "input", "params", "code"]  # no mtime: the tools share the tree
TARGETS = ["--", "pack", "evalpack"]
DATASETS = sorted(yaml.safe_load((REPO / "params.yaml").read_text())["detect"]["datasets"])
ALIGN = {f"align@{d}" for d in DATASETS}


def dry_run(root: Path, *extra: str) -> tuple[set[str], str]:
    """The stages (rule, or rule@dataset) a dry run would run, and its output."""
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *TRIGGERS, *extra, *TARGETS],
                       cwd=root, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    jobs, rule = set(), None
    for line in out.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            rule = m.group(1)
            jobs.add(rule)
            continue
        m = re.match(r"^    wildcards: .*\bdataset=([^,\s]+)", line)
        if m and rule:
            jobs.discard(rule)
            jobs.add(f"{rule}@{m.group(1)}")
    return jobs, out


def variant(tmp_path: Path, name: str, data: dict) -> str:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def _lookup(data, dotted):
    for part in dotted.split("."):
        data = data[part]
    return data


def test_sections_are_dvc_params_and_change_only_with_them(tmp_path):
    """Fast (no stage runs): the file of each stage holds exactly the params its DVC stage tracks,
    and a variant rewrites only the files of the stages whose tracked values it changes."""
    (tmp_path / "tree").mkdir()
    root = clone(tmp_path / "tree")
    dry_run(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = {name.rsplit(":", 1)[-1]: spec for name, spec in dvc_stages(root).items()}  # dvc.yaml:name off the cwd
    for name, spec in stages.items():
        data = json.loads((root / SECTIONS / f"{name}.json").read_text())
        assert set(data["params"]) == spec["params"], name
        assert data["params"] == {k: _lookup(params, k) for k in spec["params"]}, name
    files = sorted((root / SECTIONS).glob("*.json"))
    assert {f.stem for f in files} == set(stages)
    for f in files:
        if f.stat().st_mtime:  # 0: outputs in git that dvc.lock vouches for (reports/, metrics/)
            os.utime(f, (1000, 1000))
    before = {f.stem: f.stat().st_mtime_ns for f in files}

    jq90 = variant(tmp_path, "jq90", {"align": {"jpeg_quality": 90}})
    dry_run(root, "--configfile", jq90)
    rewritten = {f.stem for f in files if f.stat().st_mtime_ns != before[f.stem]}
    assert rewritten == ALIGN | {"pack"}  # pack tracks align.jpeg_quality
    assert json.loads((root / SECTIONS / "pack.json").read_text())["params"]["align.jpeg_quality"] == 90
    before = {f.stem: f.stat().st_mtime_ns for f in files}
    dry_run(root, "--configfile", jq90)
    assert {f.stem: f.stat().st_mtime_ns for f in files} == before, "same values: no file rewritten"


def test_a_jobs_own_snakemake_never_rewrites_the_files(tmp_path):
    """Fast: a SLURM job (or group/subprocess job) runs its own Snakemake, which reads the Snakefile
    again while the main process may not yet have recorded a job that just finished. Only the main
    process decides: were the job's Snakemake to judge those outputs foreign, it would rewrite their
    file and the next run would redo the finished job (seen on Slurm as reruns of detect)."""
    (tmp_path / "tree").mkdir()
    root = clone(tmp_path / "tree")
    dry_run(root)
    section = root / SECTIONS / "sample.json"
    assert json.loads(section.read_text())["foreign_build"] is None
    (root / "data" / "sample").mkdir(parents=True)  # outputs that no engine has a record of
    (root / "data" / "sample" / "made_elsewhere").write_text("x")
    before = (section.read_bytes(), section.stat().st_mtime_ns)
    dry_run(root, "--mode", "subprocess")
    assert (section.read_bytes(), section.stat().st_mtime_ns) == before, "a job's Snakemake rewrote the file"
    dry_run(root)
    assert json.loads(section.read_text())["foreign_build"], "the main process did not see the foreign build"


@pytest.mark.slow
def test_a_variant_reruns_what_it_changes_whichever_engine_built_the_tree(tmp_path):
    """dvc repro -> snakemake variant -> dvc status -> dvc repro -> snakemake, each step rerunning
    exactly the stages whose params changed (about 4 minutes on 2 CPU cores: the sample stage, 5
    detect and 5 align stages, pack and evalpack, each run once by DVC)."""
    (tmp_path / "tree").mkdir()
    root = clone(tmp_path / "tree")
    run(["dvc", "repro", "pack", "evalpack"], root)
    jq90 = variant(tmp_path, "jq90", {"align": {"jpeg_quality": 90}})

    # DVC built the tree: its default is up to date for Snakemake, a variant reruns what it changes
    jobs, out = dry_run(root)
    assert jobs == set() and "Nothing to be done" in out, out[-2000:]
    jobs, out = dry_run(root, "--configfile", jq90)
    assert jobs == ALIGN | {"pack", "evalpack"}, out[-3000:]
    jobs, _ = dry_run(root, "--configfile", str(root / "params/sample_large.yaml"))
    assert jobs == {"sample"} | {f"detect@{d}" for d in DATASETS} | ALIGN | {"pack", "evalpack"}

    # Snakemake builds the variant: DVC sees exactly those stages changed, Snakemake nothing left
    run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", jq90, *TRIGGERS, *TARGETS], root)
    status = json.loads(subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root,
                                       capture_output=True, text=True, check=True).stdout)
    built = {"sample", *(f"detect@{d}" for d in DATASETS), *ALIGN, "pack", "evalpack"}
    assert set(status) & built == ALIGN | {"pack", "evalpack"}, status
    jobs, out = dry_run(root, "--configfile", jq90)
    assert jobs == set() and "Nothing to be done" in out, out[-2000:]

    # DVC puts one stage back to the default: the variant reruns it (and evalpack), the default the rest
    run(["dvc", "repro", "align@lfw"], root)
    jobs, out = dry_run(root, "--configfile", jq90)
    assert jobs == {"align@lfw", "evalpack"}, out[-3000:]
    jobs, out = dry_run(root)
    assert jobs == (ALIGN - {"align@lfw"}) | {"pack", "evalpack"}, out[-3000:]

    # DVC rebuilds the default everywhere: Snakemake's default has nothing to do, the variant all
    run(["dvc", "repro", "pack", "evalpack"], root)
    jobs, out = dry_run(root)
    assert jobs == set() and "Nothing to be done" in out, out[-2000:]
    jobs, out = dry_run(root, "--configfile", jq90)
    assert jobs == ALIGN | {"pack", "evalpack"}, out[-3000:]
