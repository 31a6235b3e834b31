"""Each stage's code in one place: dvc.yaml's deps name exactly the files the stage runs (its
script, its stage module and what they import from arcpipe), and the Snakefile lists the same."""
from pathlib import Path

import pytest
import yaml

from arcpipe.stages import STAGES
from arcpipe.stages.code import stage_code, stage_code_files
from dagspec import dvc_stages, snakemake_jobs

REPO = Path(__file__).resolve().parents[1]


def _expand(paths) -> set[str]:
    out = set()
    for p in paths:
        full = REPO / p
        if full.is_dir():
            out |= {f.relative_to(REPO).as_posix() for f in full.rglob("*.py")}
        elif p.endswith(".py"):
            out.add(p)
    return out


@pytest.fixture(scope="module")
def dvc():
    return dvc_stages(REPO)


def test_every_stage_has_a_script_and_a_module():
    for s in STAGES:
        assert (REPO / "scripts" / f"{s}.py").is_file()
        assert (REPO / "src" / "arcpipe" / "stages" / f"{s}.py").is_file()
    scripts = {p.stem for p in (REPO / "scripts").glob("*.py")} - {"rectool"}
    assert scripts == set(STAGES)


def test_dvc_deps_name_exactly_the_code_each_stage_runs(dvc):
    for name, spec in dvc.items():
        stage = name.split("@")[0]
        code = {d for d in spec["deps"] if d.startswith(("scripts/", "src/"))}
        assert _expand(code) == set(stage_code_files(stage)), (
            f"{name}: dvc.yaml code deps differ from what the stage imports; expected {stage_code(stage)}")


def test_snakemake_rules_take_the_same_code(tmp_path):
    variant = tmp_path / "v.yaml"
    variant.write_text(yaml.safe_dump({"detect": {"shards": 2}, "align": {"shards": 2}}))
    jobs = [j for j in snakemake_jobs(REPO, "--configfile", str(variant)) if j["shell"]]
    assert {j["rule"] for j in jobs} >= {"detect_list", "detect_part", "align_part"}
    for j in jobs:
        stage = j["rule"].removesuffix("_part").removesuffix("_list")
        code = {i for i in j["input"] if i.startswith(("scripts/", "src/"))}
        assert _expand(code) == set(stage_code_files(stage)), j["rule"]


def test_the_closure_follows_function_level_imports():
    files = set(stage_code_files("pack"))
    assert "src/arcpipe/recordio/writer.py" in files and "src/arcpipe/pack.py" in files
    assert not any(f.startswith("src/arcpipe/evaluate/") for f in files)
    assert "src/arcpipe/detect/mtcnn.py" not in files and "src/arcpipe/detect/mtcnn.py" in stage_code_files("detect")
