"""The params schema: every kind of mistake stops with one line naming the key, before any output."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from arcpipe.cli import dvc_overrides
from arcpipe.params import ParamsError, deep_merge, load_params, load_yaml
from arcpipe.runner import run_stage

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, name, data) -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(p)


def defaults() -> dict:
    return load_yaml(REPO / "params.yaml")


def test_default_params_validate():
    p = load_params([REPO / "params.yaml"])
    assert p.align.image_size == 112
    assert p.pack.dataset in p.detect.datasets


@pytest.mark.parametrize("variant", sorted((REPO / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_every_variant_validates_over_defaults(variant):
    load_params([REPO / "params.yaml", variant])


def test_unknown_key_names_key_and_choices(tmp_path):
    d = defaults()
    d["align"]["image_sise"] = 112
    with pytest.raises(ParamsError) as e:
        load_params([write(tmp_path, "p.yaml", d)])
    msg = str(e.value)
    assert "align.image_sise: unknown key" in msg and "image_size" in msg
    assert "\n" not in msg


def test_unknown_section(tmp_path):
    d = defaults()
    d["trian"] = {"lr": 0.1}
    with pytest.raises(ParamsError, match=r"trian: unknown key"):
        load_params([write(tmp_path, "p.yaml", d)])


def test_string_where_number_belongs(tmp_path):
    d = defaults()
    d["pack"]["quality"] = "95"
    with pytest.raises(ParamsError, match=r"pack\.quality: expected an integer, got str '95'"):
        load_params([write(tmp_path, "p.yaml", d)])


@pytest.mark.parametrize(
    "section,key,value,pattern",
    [
        ("align", "image_size", 100, r"align\.image_size: image_size must be a multiple of 112 or 128"),
        ("pack", "quality", 0, r"pack\.quality: input should be greater than or equal to 1"),
        ("detect", "shards", 0, r"detect\.shards: input should be greater than 0"),
        ("pack", "dataset", "nope", r"pack\.dataset: 'nope' is not one of detect\.datasets"),
    ],
)
def test_impossible_values(tmp_path, section, key, value, pattern):
    d = defaults()
    d[section][key] = value
    with pytest.raises(ParamsError, match=pattern):
        load_params([write(tmp_path, "p.yaml", d)])


def test_variant_error_names_the_variant_file(tmp_path):
    base = write(tmp_path, "params.yaml", defaults())
    var = write(tmp_path, "variant.yaml", {"align": {"jpeg_quality": "high"}})
    with pytest.raises(ParamsError) as e:
        load_params([base, var])
    assert str(e.value).startswith(var + ": align.jpeg_quality: expected an integer")


def test_missing_variant_file(tmp_path):
    with pytest.raises(ParamsError, match=r"nope\.yaml: params file does not exist"):
        load_params([REPO / "params.yaml", tmp_path / "nope.yaml"])


def test_not_yaml(tmp_path):
    with pytest.raises(ParamsError, match=r"p\.yaml: line 2: not valid YAML: expected ','"):
        load_params([write(tmp_path, "p.yaml", "a: [1, 2\n")])


def test_variant_merges_deeply_and_keeps_the_rest(tmp_path):
    base = write(tmp_path, "params.yaml", defaults())
    var = write(tmp_path, "v.yaml", {"detect": {"datasets": {"lfw": {"preset": "deploy"}}}})
    p = load_params([base, var])
    assert p.detect.datasets["lfw"].preset == "deploy"
    assert p.detect.datasets["lfw"].source == defaults()["detect"]["datasets"]["lfw"]["source"]
    assert set(p.detect.datasets) == set(defaults()["detect"]["datasets"])


def test_deep_merge_replaces_lists_and_scalars():
    assert deep_merge({"a": {"b": [1, 2], "c": 1}}, {"a": {"b": [3]}}) == {"a": {"b": [3], "c": 1}}


def test_dvc_overrides_round_trip(tmp_path):
    var = write(tmp_path, "v.yaml", {"a": {"b": 1, "s": "x y", "l": [1, "q"], "t": True, "n": None}})
    assert sorted(dvc_overrides(var)) == sorted(
        ["++a.b=1", "++a.s='x y'", "++a.l=[1,'q']", "++a.t=true", "++a.n=null"]
    )


def _body_that_writes(out: Path):
    def body(ctx):
        out.write_text("written")
        return {"in": 1}

    return body


@pytest.mark.parametrize(
    "mutate,expect",
    [
        (lambda d: d["align"].update(image_sise=112), "align.image_sise: unknown key"),
        (lambda d: d["detect"].update(batch_size="32"), "detect.batch_size: expected an integer"),
    ],
)
def test_stage_stops_before_writing(tmp_path, capsys, monkeypatch, mutate, expect):
    monkeypatch.chdir(tmp_path)
    d = defaults()
    mutate(d)
    pfile = write(tmp_path, "params.yaml", d)
    out = tmp_path / "out.txt"
    rc = run_stage("align", _body_that_writes(out), ["--params", pfile])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and expect in err[0]
    assert not out.exists()


def test_stage_shard_out_of_range(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.txt"
    rc = run_stage("align", _body_that_writes(out), ["--params", str(REPO / "params.yaml"), "--shard", "4/4"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "shard index 4 is out of range for 4 shards" in err
    assert not out.exists()


def test_stage_missing_variant_file_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.txt"
    rc = run_stage("align", _body_that_writes(out), ["--params", str(REPO / "params.yaml"), "params/typo.yaml"])
    assert rc == 2 and "params/typo.yaml: params file does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_stage_success_logs_summary_last(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.txt"
    rc = run_stage("align", _body_that_writes(out), ["--params", str(REPO / "params.yaml")])
    assert rc == 0 and out.read_text() == "written"
    log = (tmp_path / "logs" / "align.log").read_text().strip().splitlines()
    assert "summary:" in log[-1] and '"in": 1' in log[-1]


def test_cli_dvc_args_refuses_bad_variant(tmp_path):
    var = write(tmp_path, "v.yaml", {"pack": {"quality": "x"}})
    r = subprocess.run([sys.executable, "-m", "arcpipe.cli", "params", "dvc-args", var],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "pack.quality: expected an integer" in r.stderr


def test_missing_input_path_names_the_key(tmp_path):
    d = defaults()
    d["detect"]["out_dir"] = str(tmp_path / "detect")
    d["detect"]["datasets"]["lfw"]["source"] = str(tmp_path / "no_such_lfw")
    pfile = write(tmp_path, "params.yaml", d)
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "detect.py"), "--params", pfile, "--dataset", "lfw"],
                       cwd=tmp_path, capture_output=True, text=True)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2
    errors = [line for line in err if "error" in line]
    assert errors == err[-1:] and "detect.datasets.lfw.source" in err[-1] and "no_such_lfw" in err[-1], err
    assert not (tmp_path / "detect").exists()


def test_missing_input_path_set_by_a_variant_names_the_variant(tmp_path):
    d = defaults()
    d["detect"]["out_dir"] = str(tmp_path / "detect")
    base = write(tmp_path, "params.yaml", d)
    var = write(tmp_path, "variant.yaml", {"detect": {"datasets": {"lfw": {"source": str(tmp_path / "gone")}}}})
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "detect.py"), "--params", base, var, "--dataset", "lfw"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(
        f"{var}: detect.datasets.lfw.source: input path '{tmp_path / 'gone'}' does not exist")
