"""index.html and the sections beyond the table: the same rows as results.md, images inline,
absent inputs named instead of failing, the same bytes twice, text escaped."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from arcpipe.params import Params
from arcpipe.report import build_rows, load_metrics, render_markdown, table_cells
from arcpipe.report_html import (CLEAN_PLOTS, CONTACT_SHEET, MAX_POINTS, Chart, Extras, Series, code_version,
                                 figure_files, gather, inputs_from_params, read_checksums, render_html,
                                 render_markdown_extras, svg_chart)
from arcpipe.stages import main

NASTY = 'r100 <script>alert("x")</script> & <b>co</b>'


def _verif(name: str, acc: float, model_name: str = "r100-test") -> dict:
    return {"benchmark": name, "protocol": "verification-10fold", "acc_mean": acc, "acc_std": 0.004,
            "val_mean": 0.9, "val_std": 0.02, "far_target": 0.001, "pairs": 6000, "folds": 10,
            "fold_rule": "official (pairs.txt)", "pairs_listed": 6000, "pairs_dropped": 0,
            "val_train_impostors": [2700] * 10,
            "data": {"path": f"data/{name}.bin", "sha256": "ab" * 32},
            "model": {"kind": "onnx", "name": model_name, "trained_on": "MS1MV2", "sha256": "cd" * 32}}


def _tsv(path: Path, name: str, values, timestamp: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = ("timestamp\t" if timestamp else "") + f"step\t{name}\n"
    body = "".join((f"{1700000000 + i}\t" if timestamp else "") + f"{10 * (i + 1)}\t{v}\n"
                   for i, v in enumerate(values))
    path.write_text(head + body)


def make_inputs(root: Path, model_name: str = "r100-test") -> Path:
    """A small, complete set of report inputs under `root` and the params.yaml naming them."""
    m = root / "metrics"
    m.mkdir(parents=True)
    (m / "lfw.json").write_text(json.dumps(_verif("lfw", 0.9950, model_name)))
    (m / "cfp_fp.json").write_text(json.dumps(_verif("cfp_fp", 0.9700, model_name)))
    (m / "summary.json").write_text(json.dumps({"stage": "evaluate"}))
    plots = root / "plots"
    plots.mkdir()
    fpr = np.concatenate([[0.0], np.logspace(-4, 0, 60)])
    tpr = np.clip(0.6 + 0.1 * np.log10(fpr[1:] * 1e4) ** 0.9, 0, 1)
    tpr = np.concatenate([[0.0], tpr])
    (plots / "roc_lfw.csv").write_text("threshold,fpr,tpr\n" + "".join(
        f"{t:.3f},{float(a)!r},{float(b)!r}\n" for t, a, b in zip(np.linspace(1, 0, 61), fpr, tpr)))
    (plots / "roc_ijbx.csv").write_text("fpr,tpr\n0.0,0.0\n0.001,0.5\n0.01,0.8\n0.1,0.95\n1.0,1.0\n")
    _tsv(root / "dvclive/plots/metrics/train/loss.tsv", "loss", [28.0, 22.5, 18.0, 15.2, 13.9, "nan", 12.0])
    _tsv(root / "dvclive/plots/metrics/verify/lfw/acc.tsv", "acc", [0.7, 0.8, 0.85])
    _tsv(root / "dvclive/train_bootstrap/plots/metrics/train/loss.tsv", "loss", [30.0, 25.0, 20.0], timestamp=True)
    from arcpipe.align.contact_sheet import encode_sheet, make_contact_sheet

    rng = np.random.default_rng(0)
    faces = [(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8), None, f"ok id{i}") for i in range(10)]
    sheet = root / "data/align/lfw" / CONTACT_SHEET
    sheet.parent.mkdir(parents=True)
    sheet.write_bytes(encode_sheet(make_contact_sheet(faces, [(None, "no_face: none")])))
    from arcpipe.clean.plots import nearest_centre_histogram, similarity_histogram

    clean = root / "data/clean"
    clean.mkdir(parents=True)
    cos = rng.uniform(-0.2, 1.0, 300)
    similarity_histogram(cos, cos > 0.25, 0.25, clean / CLEAN_PLOTS[0])
    nearest_centre_histogram(rng.uniform(0, 0.9, 40), None, 0.7, None, clean / CLEAN_PLOTS[1])
    (root / "cleaning").mkdir()
    (root / "cleaning/metrics.json").write_text(json.dumps({
        "images_in": 300, "images_out": 251, "identities_in": 40, "identities_out": 37,
        "removed": {"subcenter": {"images": 20, "identities": 0}, "intra": {"images": 25, "identities": 0},
                    "inter": {"images": 0, "identities": 2}, "min_images": {"images": 4, "identities": 1}},
        "quality": {"kinds": {"mislabelled": {"injected": 25, "caught": 22, "missed": 3, "precision": 0.88,
                                              "recall": 0.88}}}}))
    lfw_md5 = hashlib.md5((m / "lfw.json").read_bytes()).hexdigest()
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "evaluate": {"cmd": "python scripts/evaluate.py", "outs": [
            {"path": "metrics/lfw.json", "hash": "md5", "md5": lfw_md5, "size": (m / "lfw.json").stat().st_size},
            {"path": "metrics/cfp_fp.json", "hash": "md5", "md5": "0" * 32,
             "size": (m / "cfp_fp.json").stat().st_size},
            {"path": "plots", "hash": "md5", "md5": "1" * 32 + ".dir", "size": 10, "nfiles": 2},
            {"path": "data/evaluate", "hash": "md5", "md5": "2" * 32 + ".dir", "size": 10, "nfiles": 2}]},
        "report": {"cmd": "python scripts/report.py", "outs": [{"path": "reports", "md5": "3" * 32 + ".dir"}]}}},
        sort_keys=False))
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({
        "evaluate": {"metrics_dir": "metrics", "plots_dir": "plots"},
        "report": {"out_dir": "reports", "contact_sheets": {"lfw": f"data/align/lfw/{CONTACT_SHEET}",
                                                            "ijbs": f"data/align/ijbs/{CONTACT_SHEET}"}}}))
    return params


def _render(root: Path):
    params_obj = _load(root / "params.yaml")
    metrics = load_metrics(root / "metrics")
    rows = build_rows(metrics)
    extras = gather(inputs_from_params(params_obj), params_obj, ["params.yaml"])
    return rows, metrics, extras


def _load(path: Path) -> Params:
    from arcpipe.params import load_params

    return load_params([path])


class _Tables(HTMLParser):
    """Cell texts of every table by id, and every <img> src."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.imgs: list[dict[str, str]] = []
        self.tags: list[str] = []
        self._table = None
        self._cell = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", f"t{len(self.tables)}"), [])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._table is not None and self._in_body:
            self._table.append([])
        elif tag == "td" and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.imgs.append(a)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._table[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: str) -> _Tables:
    p = _Tables()
    p.feed(page)
    p.close()
    return p


def _md_table(md: str) -> list[list[str]]:
    lines = md.splitlines()
    start = lines.index("| benchmark | metric | ours | paper | ours − paper | notes |") + 2
    out = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        out.append(line[2:-2].split(" | "))
    return out


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_inputs(tmp_path)
    return tmp_path


def test_table_rows_are_the_markdown_rows(inputs):
    rows, metrics, extras = _render(inputs)
    page = render_html(rows, metrics, extras)
    html_rows = _parse(page).tables["results"]
    md = render_markdown(rows, metrics)
    assert html_rows == _md_table(md) == [list(table_cells(r)) for r in rows]
    assert len(html_rows) == len(rows) > 5
    assert any(r[:3] == ["LFW", "LFW accuracy", "99.50 ± 0.40"] for r in html_rows)
    # every table row carries its benchmark and metric for a reader (or a test) to find
    for r in rows:
        assert f'data-benchmark="{r["benchmark"]}" data-metric="{r["metric"]}"' in page


def test_images_are_inline_and_nothing_is_fetched(inputs):
    rows, metrics, extras = _render(inputs)
    page = render_html(rows, metrics, extras)
    parsed = _parse(page)
    srcs = [i["src"] for i in parsed.imgs]
    assert len(srcs) == 3                                          # one contact sheet, two histograms
    files = {inputs / f"data/align/lfw/{CONTACT_SHEET}", *(inputs / "data/clean" / n for n in CLEAN_PLOTS)}
    decoded = set()
    for src in srcs:
        m = re.fullmatch(r"data:(image/(?:png|jpeg));base64,([A-Za-z0-9+/=]+)", src)
        assert m, src[:40]
        decoded.add(base64.b64decode(m.group(2)))
    assert decoded == {f.read_bytes() for f in files}
    assert all(i.get("alt") for i in parsed.imgs)
    assert "script" not in parsed.tags and "link" not in parsed.tags and "iframe" not in parsed.tags
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)   # no URL but data: and anchors
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert page.count("<svg ") == 1 + 3 == len(figure_files(extras))   # the ROC and three training curves
    assert "<style>" in page


def test_sections_carry_their_content(inputs):
    rows, metrics, extras = _render(inputs)
    page = render_html(rows, metrics, extras)
    parsed = _parse(page)
    assert [r[:2] for r in parsed.tables["cleaning-rules"]][:2] == [["subcenter", "20"], ["intra", "25"]]
    assert parsed.tables["cleaning-quality"] == [["mislabelled", "25", "22", "3", "0.88", "0.88"]]
    checks = {r[1]: r[5] for r in parsed.tables["checksums"]}
    assert checks == {"metrics/lfw.json": "matches the file here", "metrics/cfp_fp.json": "differs here (md5)",
                      "plots": "folder (not checked)", "data/evaluate": "absent here"}   # report's own entry left out
    assert "ijbs" in " ".join(extras.missing["alignment"]) and "does not exist" in " ".join(extras.missing["alignment"])
    assert [c.title for c in extras.training] == ["train: train/loss", "train: verify/lfw/acc",
                                                  "train_bootstrap: train/loss"]
    assert extras.training[0].series[0].y == (28.0, 22.5, 18.0, 15.2, 13.9, 12.0)   # the NaN is left out
    assert extras.roc[0].sources == ("plots/roc_ijbx.csv", "plots/roc_lfw.csv")
    assert extras.roc[0].series[1].points == 60                                      # FPR 0 has no log place
    machine = dict((r[0], r[1]) for r in parsed.tables["machine"])
    assert {"code", "platform", "CPUs", "python", "torch", "params"} <= set(machine)
    assert "evaluate:\n  model:\n" in extras.run.params_yaml and "metrics_dir: metrics" in extras.run.params_yaml
    md = render_markdown(rows, metrics) + render_markdown_extras(extras, "reports")
    for heading in ("## ROC curves", "## Training curves", "## Alignment contact sheets", "## Cleaning",
                    "## What was run"):
        assert heading in md
    assert "![contact sheet of lfw](../data/align/lfw/contact_sheet.jpg)" in md
    assert "(../data/clean/intra_similarity.png)" in md and "(../data/clean/nearest_centre.png)" in md
    assert "(figures/roc.svg)" in md and "```yaml\ndownload:\n" in md
    assert "| evaluate | metrics/cfp_fp.json | " + "0" * 32 in md


def test_absent_inputs_are_named_not_fatal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/lfw.json").write_text(json.dumps(_verif("lfw", 0.99)))
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots/roc_bad.csv").write_text("a,b\n1,2\n")                      # no fpr/tpr columns
    (tmp_path / "data/align/lfw").mkdir(parents=True)
    (tmp_path / "data/align/lfw" / CONTACT_SHEET).write_bytes(b"not a jpeg")
    (tmp_path / "cleaning").mkdir()
    (tmp_path / "cleaning/metrics.json").write_text("[1, 2]")
    p = Params.model_validate({"detect": {"datasets": {"train": {"source": "x", "format": "folder"},
                                                       "lfw": {"source": "x", "format": "lfw"}}}})
    extras = gather(inputs_from_params(p), p, [])
    missing = extras.missing
    assert "roc_bad.csv: no fpr and tpr columns" in " ".join(missing["roc"])
    assert any("train: not produced" in line for line in missing["training"])
    assert any("train_bootstrap: not produced" in line for line in missing["training"])
    assert missing["alignment"] == [
        f"contact sheet of train: not produced (data/align/train/{CONTACT_SHEET} does not exist; "
        "the align stage writes it)",
        f"contact sheet of lfw: data/align/lfw/{CONTACT_SHEET} is not a PNG or JPEG image"]
    assert "expected a JSON object, got list" in missing["cleaning"][0]
    assert len(missing["cleaning"]) == 3                                           # + the two histograms
    assert "dvc.lock does not exist" in missing["run"][0]
    rows, metrics = build_rows(load_metrics("metrics")), load_metrics("metrics")
    page = render_html(rows, metrics, extras)
    md = render_markdown_extras(extras, "reports")
    for lines in missing.values():
        for line in lines:
            assert f'<p class="missing">{line}</p>' in page.replace("&#x27;", "'")
            assert f"- _{line}_" in md
    assert "<img" not in page and "<svg" not in page
    # nothing at all: every section still there, each saying so
    shutil.rmtree(tmp_path / "plots")
    extras = gather(inputs_from_params(Params()), Params(), [])
    assert "not produced: no ROC files plots/roc_*.csv" in extras.missing["roc"][0]
    assert "no contact sheets asked for" in extras.missing["alignment"][0]
    page = render_html(rows, metrics, extras)
    assert all(f'<section id="{s}">' in page for s in ("roc", "training", "alignment", "cleaning", "run"))


def test_two_runs_give_the_same_bytes(inputs, capsys):
    assert main("report", ["--params", "params.yaml"]) == 0
    out = inputs / "reports"
    first = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert main("report", ["--params", "params.yaml"]) == 0
    second = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert first == second
    assert sorted(first) == ["figures/roc.svg", "figures/training-train-train-loss.svg",
                             "figures/training-train-verify-lfw-acc.svg",
                             "figures/training-train_bootstrap-train-loss.svg",
                             "headline.json", "index.html", "results.csv", "results.md", "summary.json"]
    summary = json.loads(first["summary.json"])
    assert (summary["html"], summary["roc_curves"], summary["training_curves"], summary["contact_sheets"],
            summary["cleaning"], summary["checksums"]) == (True, 2, 3, 1, True, 4)
    assert summary["not_produced"] == [f"alignment: contact sheet of ijbs: not produced (data/align/ijbs/"
                                       f"{CONTACT_SHEET} does not exist; the align stage writes it)"]
    for name, data in first.items():
        if name.endswith(".svg"):
            ET.fromstring(data)                                                    # well-formed XML
    # html: false writes the Markdown twin alone
    params = yaml.safe_load((inputs / "params.yaml").read_text())
    params["report"]["html"] = False
    (inputs / "params.yaml").write_text(yaml.safe_dump(params))
    assert main("report", ["--params", "params.yaml"]) == 0
    md = (out / "results.md").read_text()
    assert not (out / "index.html").exists() and "html: false" in md
    assert md.split("The resolved params")[0] == first["results.md"].decode().split("The resolved params")[0]


def test_text_is_escaped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_inputs(tmp_path, model_name=NASTY)
    _tsv(tmp_path / "dvclive/plots/metrics/train/a&b<c>.tsv", "a&b<c>", [1.0, 2.0])
    rows, metrics, extras = _render(tmp_path)
    page = render_html(rows, metrics, extras)
    assert "<script" not in page and "<b>co" not in page
    assert "r100 &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;co&lt;/b&gt;" in page
    assert "train/a&amp;b&lt;c&gt;" in page
    for svg in figure_files(extras).values():
        ET.fromstring(svg)
    assert _parse(page).tables["results"] == [list(table_cells(r)) for r in rows]   # the text itself survives


def test_long_curves_are_thinned_and_say_so():
    xs = tuple(float(i) for i in range(10_000))
    chart = Chart("c", "t", "step", "loss", (Series("loss", xs, xs, points=len(xs)),))
    from arcpipe.report_html import _thin

    x, y = _thin(list(xs), list(xs))
    assert len(x) == MAX_POINTS and x[0] == 0 and x[-1] == 9999
    svg = svg_chart(Chart("c", "t", "step", "loss", (Series("loss", x, y, points=len(xs)),)))
    assert "10,000 points, drawn at 1,500" in svg
    assert svg_chart(chart) == svg_chart(chart)
    ET.fromstring(svg)


def test_code_version_outside_git_is_unknown(tmp_path, monkeypatch):
    assert code_version(tmp_path) == {"describe": "unknown", "commit": "unknown", "changes": []}
    here = code_version()
    assert here["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", here["commit"])
    monkeypatch.setattr("arcpipe.report_html.shutil.which", lambda name: None)
    assert code_version()["describe"] == "unknown"


def test_checksums_leave_out_the_report_and_survive_a_bad_lock(tmp_path):
    ex = Extras()
    (tmp_path / "dvc.lock").write_text("stages: [unclosed")
    assert read_checksums(str(tmp_path / "dvc.lock"), ex) == [] and "not readable" in ex.missing["run"][0]


def test_default_inputs_follow_the_stages_params():
    p = Params.model_validate({"detect": {"datasets": {"train": {"source": "x", "format": "folder"},
                                                       "lfw": {"source": "x", "format": "lfw"}}},
                               "align": {"out_dir": "out/align/"}, "clean": {"metrics": "c/m.json", "out_dir": "c/d"},
                               "train": {"live_dir": "live"}})
    i = inputs_from_params(p)
    assert i.contact_sheets == {"train": f"out/align/train/{CONTACT_SHEET}", "lfw": f"out/align/lfw/{CONTACT_SHEET}"}
    assert i.training == {"train": "live", "train_bootstrap": "dvclive/train_bootstrap"}
    assert (i.clean_metrics, i.clean_dir, i.plots_dir) == ("c/m.json", "c/d", "plots")
    p = Params.model_validate({"report": {"training": {"main": "x"}, "contact_sheets": {}, "clean_metrics": "m.json",
                                          "clean_dir": "d"}})
    i = inputs_from_params(p)
    assert (i.training, i.contact_sheets, i.clean_metrics, i.clean_dir) == ({"main": "x"}, {}, "m.json", "d")
    with pytest.raises(Exception, match="must be letters"):
        Params.model_validate({"report": {"training": {"a b": "x"}}})


def test_file_names_are_the_stages_own():
    from arcpipe.align.aligned_set import CONTACT_SHEET as ALIGNED
    from arcpipe.stages.clean import OUTPUTS

    assert CONTACT_SHEET == ALIGNED
    assert set(CLEAN_PLOTS) <= set(OUTPUTS)
