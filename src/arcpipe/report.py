"""The report: every measured number beside the paper's number for the same setting.

From <evaluate.metrics_dir>/*.json (not summary.json) the report stage writes into report.out_dir:
    results.md     the table, the paper's setting, the model and data that produced our numbers
    results.csv    one row per (benchmark, metric): ours, paper, delta, setting, notes
    summary.json   the stage summary
The paper's table lives in arcpipe.paper (one place).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional

from .errors import PipelineError
from .paper import MAIN_SETTING, PAPER_NUMBERS, SETTINGS, PaperNumber

__all__ = ["load_metrics", "measured_numbers", "build_rows", "render_markdown", "render_csv"]

# display order and names of the benchmarks
ORDER = ["lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp", "ytf", "megaface", "ijbb", "ijbc"]
TITLES = {"lfw": "LFW", "cfp_fp": "CFP-FP", "cfp_ff": "CFP-FF", "agedb_30": "AgeDB-30", "calfw": "CALFW",
          "cplfw": "CPLFW", "vgg2_fp": "VGG2-FP", "ytf": "YTF", "megaface": "MegaFace", "ijbb": "IJB-B",
          "ijbc": "IJB-C"}
CSV_COLUMNS = ["benchmark", "metric", "label", "ours", "ours_std", "paper", "delta", "paper_setting",
               "paper_uncertain", "note", "model", "data", "data_sha256"]


def load_metrics(metrics_dir: str | Path) -> dict[str, dict[str, Any]]:
    """{benchmark name: metrics dict} from every *.json except summary.json."""
    d = Path(metrics_dir)
    if not d.is_dir():
        raise PipelineError(f"{d}: metrics folder does not exist (run the evaluate stage first)")
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(d.glob("*.json")):
        if f.name == "summary.json":
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PipelineError(f"{f}: not a readable metrics JSON file: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise PipelineError(f"{f}: expected a JSON object of metrics, got {type(data).__name__}")
        out[str(data.get("benchmark") or f.stem)] = data
    return out


def _pct(v: Any) -> Optional[float]:
    """A rate as a percentage: values in [0, 1] are fractions; None/NaN stay None."""
    if v is None or isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    return x * 100.0 if 0.0 <= x <= 1.0 else x


def _find_rate(d: Any, at: float, names: Iterable[str]) -> Any:
    """Look, depth first, for a mapping named one of `names` that has the key for rate `at`
    (keys like '0.0001' or '1e-04'); return that value."""
    keys = {repr(float(at)), f"{at:.0e}", f"{at:g}", str(at)}
    names = tuple(names)
    if isinstance(d, dict):
        for name in names:
            sub = d.get(name)
            if isinstance(sub, dict):
                for k in keys:
                    if k in sub:
                        return sub[k]
        for v in d.values():
            found = _find_rate(v, at, names)
            if found is not None:
                return found
    return None


def _find_key(d: Any, names: Iterable[str]) -> Any:
    names = tuple(names)
    if isinstance(d, dict):
        for n in names:
            if n in d and not isinstance(d[n], (dict, list)):
                return d[n]
        for v in d.values():
            found = _find_key(v, names)
            if found is not None:
                return found
    return None


def measured_numbers(name: str, m: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline numbers of one metrics file: [{metric, label, ours (percent), ours_std}]."""
    rows: list[dict[str, Any]] = []
    title = TITLES.get(name, name)
    if str(m.get("protocol", "")).startswith("verification"):
        rows.append({"metric": "acc", "label": f"{title} accuracy", "ours": _pct(m.get("acc_mean")),
                     "ours_std": _pct(m.get("acc_std"))})
        far = m.get("far_target", 1e-3)
        rows.append({"metric": f"val@far={far:g}", "label": f"{title} VAL@FAR={far:g}",
                     "ours": _pct(m.get("val_mean")), "ours_std": _pct(m.get("val_std"))})
    elif name in ("ijbb", "ijbc", "ijbs") or name.startswith("ijb"):
        for far in (1e-6, 1e-5, 1e-4, 1e-3):
            v = _find_rate(m, far, ("tar", "tar_at_far", "TAR"))
            if v is not None:
                rows.append({"metric": f"tar@{far:.0e}".replace("e-0", "e-"), "label": f"{title} 1:1 TAR@FAR={far:g}",
                             "ours": _pct(v), "ours_std": None})
    elif name == "megaface":
        rows.extend(_megaface_rows(m))
    elif name == "ytf":
        v = _find_key(m, ("acc_mean", "accuracy", "acc"))
        sd = _find_key(m, ("acc_std", "accuracy_std"))
        rows.append({"metric": "acc", "label": "YTF accuracy", "ours": _pct(v), "ours_std": _pct(sd)})
    return rows


def _megaface_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """Rank-1 Id and TAR@FAR=1e-6 at the largest distractor count, refined when it was run."""
    res = m.get("metrics", m)
    if not isinstance(res, dict):
        return []
    mode = "refined" if isinstance(res.get("refined"), dict) and res["refined"] else "raw"
    by_size = res.get(mode)
    if not isinstance(by_size, dict) or not by_size:
        return []
    size = max(by_size, key=lambda k: int(k) if str(k).isdigit() else -1)
    r = by_size[size]
    note = f"{int(size):,} distractors" + ("" if mode == "refined" else ", raw lists (no noise lists given)")
    rows = []
    rank1 = (r.get("rank") or {}).get("1")
    if rank1 is not None:
        rows.append({"metric": "id_rank1_refined" if mode == "refined" else "id_rank1_raw",
                     "label": f"MegaFace rank-1 Id ({mode})", "ours": _pct(rank1), "ours_std": None, "note": note})
    tar = _find_rate(r, 1e-6, ("tar_at_far", "tar"))
    if tar is not None:
        rows.append({"metric": "ver_tar@1e-6_refined" if mode == "refined" else "ver_tar@1e-6_raw",
                     "label": f"MegaFace Ver TAR@FAR=1e-6 ({mode})", "ours": _pct(tar), "ours_std": None, "note": note})
    return rows


def _model_text(m: dict[str, Any]) -> str:
    ident = m.get("model")
    if not ident:
        return ""
    if not isinstance(ident, dict):
        return str(ident)
    parts = [str(ident.get("name") or ident.get("kind") or "?")]
    if ident.get("kind"):
        parts.append(f"kind {ident['kind']}")
    if ident.get("trained_on"):
        parts.append(f"trained on {ident['trained_on']}")
    if ident.get("sha256"):
        parts.append(f"sha256 {str(ident['sha256'])[:12]}")
    return ", ".join(parts)


def build_rows(metrics: dict[str, dict[str, Any]], paper: Iterable[PaperNumber] = PAPER_NUMBERS) -> list[dict[str, Any]]:
    """One row per measured number and per paper number of the main setting (either may be absent)."""
    paper = list(paper)
    main = {(p.key, p.metric): p for p in paper if p.setting == MAIN_SETTING}
    others = {}
    for p in paper:
        if p.setting != MAIN_SETTING:
            others.setdefault((p.key, p.metric), []).append(p)
    rows: list[dict[str, Any]] = []
    seen = set()

    def order(name: str) -> tuple[int, str]:
        return (ORDER.index(name) if name in ORDER else len(ORDER), name)

    for name in sorted(metrics, key=order):
        m = metrics[name]
        data = m.get("data") if isinstance(m.get("data"), dict) else {}
        for r in measured_numbers(name, m):
            p = main.get((name, r["metric"]))
            seen.add((name, r["metric"]))
            rows.append(_row(name, r, p, others.get((name, r["metric"]), []), _model_text(m),
                             str(data.get("path", "")), str(data.get("sha256", ""))))
    for (key, metric), p in main.items():
        if (key, metric) not in seen:
            rows.append(_row(key, {"metric": metric, "label": p.label, "ours": None, "ours_std": None}, p,
                             others.get((key, metric), []), "", "", ""))
    rows.sort(key=lambda r: order(r["benchmark"]))
    return rows


def _row(name, r, p: Optional[PaperNumber], other: list[PaperNumber], model: str, data: str, sha: str) -> dict[str, Any]:
    ours = r["ours"]
    notes = [r["note"]] if r.get("note") else []
    if p is not None and p.note:
        notes.append(p.note)
    for o in other:
        notes.append(f"{SETTINGS[o.setting].describe()}: {o.value:g}")
    if p is not None and ours is None:
        notes.append("not measured")
    return {
        "benchmark": name,
        "metric": r["metric"],
        "label": p.label if p is not None else r["label"],
        "ours": ours,
        "ours_std": r.get("ours_std"),
        "paper": p.value if p is not None else None,
        "delta": (ours - p.value) if (p is not None and ours is not None) else None,
        "paper_setting": p.setting if p is not None else "",
        "paper_uncertain": bool(p.uncertain) if p is not None else False,
        "note": "; ".join(notes),
        "model": model,
        "data": data,
        "data_sha256": sha,
    }


def _fmt(v: Optional[float], digits: int = 2, sign: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def render_markdown(rows: list[dict[str, Any]], metrics: dict[str, dict[str, Any]]) -> str:
    s = SETTINGS[MAIN_SETTING]
    out = io.StringIO()
    out.write("# Results beside the ArcFace paper\n\n")
    out.write(f"Paper column: {s.source}; setting {s.describe()}. Numbers in percent. "
              "`~` marks a paper figure that is uncertain; `—` means not measured / no paper figure.\n\n")
    models = sorted({r["model"] for r in rows if r["model"]})
    if models:
        out.write("Ours: " + "; ".join(models) + "\n\n")
    if any(isinstance(m.get("model"), dict) and m["model"].get("kind") == "pixels" for m in metrics.values()):
        out.write("**The pixels model is a training-free sanity baseline, not a face model: its numbers show "
                  "what the pipeline and the pairs alone give, and are not comparable to the paper's.**\n\n")
    out.write("| benchmark | metric | ours | paper | ours − paper | notes |\n|---|---|---:|---:|---:|---|\n")
    for r in rows:
        ours = _fmt(r["ours"])
        if r["ours"] is not None and r["ours_std"] is not None and r["metric"] == "acc":
            ours += f" ± {r['ours_std']:.2f}"
        paper = _fmt(r["paper"])
        if r["paper_uncertain"] and r["paper"] is not None:
            paper = "~" + paper
        out.write(f"| {TITLES.get(r['benchmark'], r['benchmark'])} | {r['label']} | {ours} | {paper} | "
                  f"{_fmt(r['delta'], sign=True)} | {r['note']} |\n")
    data_rows = [(n, m.get("data")) for n, m in metrics.items() if isinstance(m.get("data"), dict)]
    if data_rows:
        out.write("\n## Data\n\n| benchmark | file | sha256 | pairs |\n|---|---|---|---:|\n")
        for n, d in sorted(data_rows):
            out.write(f"| {n} | {d.get('path', '')} | {str(d.get('sha256', ''))[:16]} | {metrics[n].get('pairs', '')} |\n")
    out.write("\nThe paper's numbers are for its own trained model; ours are for the model named above, "
              "on the data files listed (their sha256 identifies the exact pack).\n")
    return out.getvalue()


def render_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else (repr(round(r[k], 6)) if isinstance(r[k], float) else r[k]))
                    for k in CSV_COLUMNS})
    return buf.getvalue()
