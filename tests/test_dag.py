"""dvc.yaml and the Snakefile describe one DAG: same stages, scripts, arguments, inputs, outputs."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dagspec import dvc_stages, script_call, snakemake_jobs

REPO = Path(__file__).resolve().parents[1]
CODE_PREFIXES = ("scripts/", "src/")
SECTIONS = ".snakemake/arcpipe/sections/"  # the params each rule's stage tracks (common.smk), not DVC deps


def _norm(p: str) -> str:
    return p.rstrip("/")


def _within(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


@pytest.fixture(scope="module")
def both():
    dvc = dvc_stages(REPO)
    jobs = [j for j in snakemake_jobs(REPO) if j["shell"]]
    return dvc, jobs


def _stage_name(job) -> str:
    base = re.sub(r"_(part|list)$", "", job["rule"])
    ds = job["wildcards"].get("dataset")
    return f"{base}@{ds}" if ds else base


def test_same_stages(both):
    dvc, jobs = both
    assert {_stage_name(j) for j in jobs} == set(dvc)


def test_same_scripts_and_arguments(both):
    dvc, jobs = both
    for j in jobs:
        if j["rule"].endswith(("_part", "_list")):
            continue
        name = _stage_name(j)
        assert script_call(j["shell"]) == script_call(dvc[name]["cmd"]), name


def test_same_outputs(both):
    dvc, jobs = both
    for j in jobs:
        name = _stage_name(j)
        outs = {_norm(o) for o in j["output"]}
        if j["rule"].endswith(("_part", "_list")):
            continue  # parts and the listing are a resume cache inside the stage's folder, undeclared in DVC
        assert outs == dvc[name]["outs"], name


def test_data_inputs_agree(both):
    """Every DVC data dependency is a Snakemake input (or lies inside one, e.g. the sample folder)."""
    dvc, jobs = both
    by_stage: dict[str, set[str]] = {}
    for j in jobs:
        by_stage.setdefault(_stage_name(j), set()).update(_norm(i) for i in j["input"])
    for name, spec in dvc.items():
        sm_inputs = by_stage[name]
        for dep in spec["deps"]:
            if dep.startswith(CODE_PREFIXES):
                continue
            covered = _within(dep, sm_inputs) or any(_within(i, {dep}) for i in sm_inputs)
            assert covered, f"{name}: DVC dependency {dep} is not a Snakemake input ({sorted(sm_inputs)})"
        for i in sm_inputs:
            if i.startswith(CODE_PREFIXES + (SECTIONS,)):
                continue
            covered = _within(i, spec["deps"]) or any(_within(d, {i}) for d in spec["deps"])
            assert covered, f"{name}: Snakemake input {i} is not a DVC dependency"


def test_params_sections_agree():
    """Each Snakemake rule passes (at least) the params sections that the DVC stage tracks."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    smk = "\n".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    for name, stage in dvc_yaml["stages"].items():
        body = stage.get("do", stage)
        sections = {str(p).split(".")[0] for p in body.get("params", [])}
        rule = re.search(rf"^rule {name}:\n(.*?)(?=^rule |\Z)", smk, re.S | re.M)
        assert rule, f"no Snakemake rule {name}"
        for sec in sections:
            assert re.search(rf'config\["{sec}"\]', rule.group(1).split("log:")[0]), f"rule {name} lacks params {sec}"


def test_scripts_listed_as_inputs(both):
    _, jobs = both
    for j in jobs:
        script, _ = script_call(j["shell"])
        assert script in j["input"], f"{j['rule']}: {script} should be an input so code changes rerun it"


def test_shards_become_jobs(tmp_path):
    variant = tmp_path / "v.yaml"
    variant.write_text(yaml.safe_dump({"detect": {"shards": 3}, "align": {"shards": 2}}))
    jobs = snakemake_jobs(REPO, "--configfile", str(variant))
    parts = [j for j in jobs if j["rule"] == "detect_part" and j["wildcards"]["dataset"] == "train"]
    assert sorted(j["wildcards"]["i"] for j in parts) == ["00000", "00001", "00002"]
    assert all("--shard" in j["shell"] for j in parts)
    lists = [j for j in jobs if j["rule"] == "detect_list" and j["wildcards"]["dataset"] == "train"]
    assert len(lists) == 1 and "--list" in lists[0]["shell"]
    assert all(lists[0]["output"][0] in j["input"] for j in parts)  # every shard starts from the one listing
    align_parts = [j for j in jobs if j["rule"] == "align_part" and j["wildcards"]["dataset"] == "lfw"]
    assert len(align_parts) == 2


def test_snakemake_refuses_bad_config_in_one_line(tmp_path):
    variant = tmp_path / "v.yaml"
    variant.write_text(yaml.safe_dump({"align": {"image_sise": 112}}))
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(variant)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0
    assert "align.image_sise: unknown key" in r.stdout + r.stderr


def test_tracked_params_are_written_out_in_params_yaml(both):
    """DVC refuses a stage whose tracked key is only a schema default: params.yaml must spell it out."""
    dvc, _ = both
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, spec in dvc.items():
        for key in spec["params"]:
            node = data
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: params.yaml lacks {key}"
                node = node[part]


def test_slurm_profile_takes_the_site_from_the_environment(tmp_path):
    """Partition and account are the user's (environment), never the profile's: shard jobs go to
    ARCPIPE_SLURM_PARTITION, trainings to ARCPIPE_SLURM_GPU_PARTITION; a CPU run asks for no GPU."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]' for the SLURM profile")
    variant = tmp_path / "v.yaml"
    variant.write_text(yaml.safe_dump({"detect": {"shards": 2}}))
    env = {**os.environ, "ARCPIPE_SLURM_PARTITION": "cpuq", "ARCPIPE_SLURM_GPU_PARTITION": "gpuq",
           "ARCPIPE_SLURM_ACCOUNT": "proj1"}
    r = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "-n", "-F",
                        "--configfile", str(variant)], cwd=REPO, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr

    def resources(rule: str) -> list[str]:
        return [next(line for line in b.splitlines() if line.strip().startswith("resources:"))
                for b in out.split(f"rule {rule}:")[1:]]

    shards = resources("detect_part")
    assert len(shards) == 2 * len(yaml.safe_load((REPO / "params.yaml").read_text())["detect"]["datasets"])
    for res in shards:
        assert "slurm_partition=cpuq" in res and "slurm_account=proj1" in res and "gpu=1" not in res, res
    for rule in ("train", "train_bootstrap"):
        (res,) = resources(rule)
        assert "slurm_partition=gpuq" in res and "gpu=0" in res, res


def test_training_across_nodes_is_one_srun_task_per_node_and_gpus_per_node(tmp_path):
    """train.nodes 2 x processes 8 on cuda: the job asks Slurm for 2 nodes, one task each and 8
    GPUs on each (gres), and its shell starts the launchers with srun (the plugin's `mpi` contract:
    it leaves the launching to the shell); one node asks for its processes as GPUs, no srun."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]' for the SLURM profile")
    variant = tmp_path / "v.yaml"
    variant.write_text(yaml.safe_dump({"train": {"device": "cuda", "processes": 8, "nodes": 2},
                                       "train_bootstrap": {"device": "cuda", "processes": 4}}))
    r = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "-n", "-F",
                        "--configfile", str(variant), "--", "train"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    blocks = {rule: out.split(f"rule {rule}:")[1].split("\n\n")[0] for rule in ("train", "train_bootstrap")}
    res = {rule: next(ln for ln in b.splitlines() if ln.strip().startswith("resources:")) for rule, b in blocks.items()}
    for want in ("nodes=2", "tasks=2", "tasks_per_gpu=0", "mpi=srun", "gres=gpu:8"):
        assert want in res["train"], res["train"]
    assert "gpu=4" in res["train_bootstrap"] and "nodes=" not in res["train_bootstrap"], res["train_bootstrap"]
    shells = {rule: [ln.split("Shell command:", 1)[1].strip() for ln in out.splitlines()
                     if "Shell command:" in ln and f"scripts/{rule}.py --params" in ln] for rule in blocks}
    assert shells["train"] and all(c.startswith("srun --nodes 2 --ntasks-per-node 1 ") for c in shells["train"]), shells
    assert shells["train_bootstrap"] and not any(c.startswith("srun") for c in shells["train_bootstrap"]), shells


def test_snakemake_loads_the_default_profile_beside_the_snakefile():
    """profiles/default is where Snakemake looks on its own (beside the Snakefile): a plain
    `snakemake` takes its rerun triggers, which leave out mtime (DVC's checkouts reset mtimes), also
    under the SLURM profile, and `--workflow-profile none` is the way out."""
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert "mtime" not in profile["rerun-triggers"] and set(profile["rerun-triggers"]) == {"input", "params", "code"}
    for extra in ([], ["--profile", "profiles/slurm"]):
        if extra and importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
            continue
        r = subprocess.run([sys.executable, "-m", "snakemake", *extra, "-n", "-F", "--cores", "1", "--", "sample"],
                           cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "workflow specific profile profiles/default " in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
    r = subprocess.run([sys.executable, "-m", "snakemake", "--workflow-profile", "none", "-n", "-F", "--cores", "1",
                        "--", "sample"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "workflow specific profile" not in r.stdout + r.stderr


def test_snakemake_lint_finds_nothing_but_the_missing_conda_envs():
    """`snakemake --lint` is clean but for one finding we keep on purpose: the rules declare no conda
    environment or container, since every rule runs in the interpreter that runs Snakemake (the
    project's venv, $ARCPIPE_PYTHON), and a second, per-rule install would go untested."""
    r = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    out = r.stdout + r.stderr
    findings = sorted({line.strip() for line in out.splitlines() if line.startswith("    * ")})
    assert findings == ["* Specify a conda environment or container for each rule.:"], out[-4000:]
