"""The stage runner: an unexpected failure is one line naming the stage and the item (the
traceback goes to the stage's log), timings stay out of the outputs, and go to logs/timings.jsonl."""
import json
import math
from pathlib import Path

import pytest

from arcpipe.runner import run_stage
from arcpipe.shards import map_batches

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_unexpected_error_is_one_line_naming_the_item(tmp_path, monkeypatch, capsys, workers):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.txt"

    def body(ctx):
        with ctx.working_on("data set demo"):
            roots = list(map_batches(math.sqrt, [4.0, 9.0, -1.0, 16.0], ctx.workers, int, (), "roots",
                                     label=lambda w: f"value {w}"))
        out.write_text(repr(roots))  # never reached
        return {"out": len(roots)}

    rc = run_stage("demo", body, ["--params", str(REPO / "params.yaml"), "--workers", str(workers)])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error" in line]) == 1
    assert err[-1].startswith("demo: error: unexpected ValueError while working on data set demo, value -1.0: "
                              "math domain error (traceback in logs/demo.log")
    assert not out.exists()
    log = (tmp_path / "logs" / "demo.log").read_text()
    assert "Traceback" in log and "math domain error" in log
    timing = json.loads((tmp_path / "logs" / "timings.jsonl").read_text().splitlines()[-1])
    assert timing["stage"] == "demo" and timing["exit"] == 1 and timing["seconds"] >= 0


def test_summaries_carry_no_wall_clock_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def body(ctx):
        ctx.write_summary(tmp_path / "summary.json", {"in": 1, "out": 1})
        return {"in": 1, "out": 1}

    assert run_stage("demo", body, ["--params", str(REPO / "params.yaml")]) == 0
    first = (tmp_path / "summary.json").read_bytes()
    assert "seconds" not in json.loads(first)
    assert run_stage("demo", body, ["--params", str(REPO / "params.yaml")]) == 0
    assert (tmp_path / "summary.json").read_bytes() == first  # same inputs, same bytes
    last = (tmp_path / "logs" / "demo.log").read_text().strip().splitlines()[-1]
    assert "summary:" in last and '"seconds"' in last  # the log keeps the time
    lines = (tmp_path / "logs" / "timings.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["exit"] == 0 for x in lines)


def test_a_summary_changes_with_its_own_params_section_only(tmp_path, monkeypatch):
    """A stage's summary records the digest of its own section: a variant that changes another
    stage's params leaves the bytes of this stage's outputs as they were."""
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text("evaluate: {batch_size: 7}\n")
    own = tmp_path / "own.yaml"
    own.write_text("evalpack: {on_missing: fail}\n")

    def body(ctx):
        ctx.write_summary(tmp_path / "summary.json", {"n": 1})
        return {"n": 1}

    digests = []
    for extra in ([], [str(other)], [str(own)]):
        assert run_stage("evalpack", body, ["--params", str(REPO / "params.yaml"), *extra]) == 0
        digests.append(json.loads((tmp_path / "summary.json").read_text())["params_sha256_16"])
    assert digests[0] == digests[1] != digests[2]
