"""Write reports/: results.md, results.csv, index.html: our metrics beside the ArcFace paper's numbers.

    python scripts/report.py

Reads <evaluate.metrics_dir>/*.json; the table and its honesty rules are arcpipe.report's
(a difference only where the setting is the paper's; rates a FAR cannot resolve are not shown).
The sections beyond the table (arcpipe.report_html) read <evaluate.plots_dir>/roc_*.csv, the
DVCLive folders' plots, the contact sheets, the clean stage's metrics and histograms and dvc.lock,
each where report.* or its stage's params put it; what is absent is named in the report, not an
error. Writes results.md, results.csv, headline.json (the headline numbers: the run's DVC metrics
file), figures/*.svg (the curves), index.html (report.html) and summary.json into report.out_dir,
whole or not at all.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fsutil import atomic_path
from ..report import build_rows, headline, load_metrics, render_csv, render_markdown
from ..report_html import FIGURES, figure_files, gather, inputs_from_params, render_html, render_markdown_extras


HEADLINE = "headline.json"  # the run's few headline numbers: the metrics file dvc exp show reads


def _live_metrics(training: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each training's DVCLive metrics.json, where it exists."""
    out = {}
    for name, folder in training.items():
        try:
            out[name] = json.loads((Path(folder) / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return out


def run(ctx) -> dict[str, Any]:
    metrics_dir = ctx.params.evaluate.metrics_dir
    metrics = load_metrics(metrics_dir)
    rows = build_rows(metrics)
    out_dir = Path(ctx.params.report.out_dir)
    inputs = inputs_from_params(ctx.params)
    with ctx.working_on("the sections beyond the table"):
        extras = gather(inputs, ctx.params, ctx.params_files)
    head = headline(rows, metrics, _live_metrics(inputs.training), extras.cleaning)
    figures = figure_files(extras)
    measured = sum(r["ours"] is not None for r in rows)
    not_produced = [f"{section}: {line}" for section, lines in extras.missing.items() for line in lines]
    counts = {"metrics_files": len(metrics), "rows": len(rows), "measured": measured,
              "with_paper_number": sum(r["ours"] is not None and r["paper"] is not None for r in rows),
              "compared": sum(r["delta"] is not None for r in rows),
              "setting_differs": sum(bool(r["setting_differs"]) for r in rows),
              "not_resolvable": sum(bool(r["not_resolvable"]) for r in rows),
              "html": ctx.params.report.html, "roc_curves": sum(len(c.sources) for c in extras.roc),
              "training_curves": len(extras.training), "contact_sheets": len(extras.sheets),
              "cleaning": extras.cleaning is not None, "checksums": len(extras.run.checksums),
              "not_produced": not_produced}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "results.md").write_text(render_markdown(rows, metrics) + render_markdown_extras(extras, out_dir),
                                        encoding="utf-8")
        (tmp / "results.csv").write_text(render_csv(rows), encoding="utf-8")
        (tmp / HEADLINE).write_text(json.dumps(head, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if figures:
            (tmp / FIGURES).mkdir()
            for name, svg in figures.items():
                (tmp / FIGURES / name).write_text(svg, encoding="utf-8")
        if ctx.params.report.html:
            (tmp / "index.html").write_text(render_html(rows, metrics, extras), encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(ctx.summary_record(counts), indent=2, sort_keys=True) + "\n")
    for line in not_produced:
        ctx.log.info("not in the report: %s", line)
    ctx.log.info("report: %d rows, %d measured, %d beside the paper in its setting, %d not resolvable; "
                 "%d curves, %d contact sheets, written to %s", len(rows), measured, counts["compared"],
                 counts["not_resolvable"], len(figures), len(extras.sheets), out_dir)
    return counts
