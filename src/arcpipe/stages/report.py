"""Write reports/results.md and results.csv: our metrics beside the ArcFace paper's numbers.

    python scripts/report.py

Reads <evaluate.metrics_dir>/*.json; the table and its honesty rules are arcpipe.report's
(a difference only where the setting is the paper's; rates a FAR cannot resolve are not shown).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fsutil import atomic_path
from ..report import build_rows, load_metrics, render_csv, render_markdown


def run(ctx) -> dict[str, Any]:
    metrics_dir = ctx.params.evaluate.metrics_dir
    metrics = load_metrics(metrics_dir)
    rows = build_rows(metrics)
    out_dir = Path(ctx.params.report.out_dir)
    measured = sum(r["ours"] is not None for r in rows)
    counts = {"metrics_files": len(metrics), "rows": len(rows), "measured": measured,
              "with_paper_number": sum(r["ours"] is not None and r["paper"] is not None for r in rows),
              "compared": sum(r["delta"] is not None for r in rows),
              "setting_differs": sum(bool(r["setting_differs"]) for r in rows),
              "not_resolvable": sum(bool(r["not_resolvable"]) for r in rows)}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "results.md").write_text(render_markdown(rows, metrics), encoding="utf-8")
        (tmp / "results.csv").write_text(render_csv(rows), encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(ctx.summary_record(counts), indent=2, sort_keys=True) + "\n")
    ctx.log.info("report: %d rows, %d measured, %d beside the paper in its setting, %d not resolvable, written to %s",
                 len(rows), measured, counts["compared"], counts["not_resolvable"], out_dir)
    return counts
