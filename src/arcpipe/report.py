"""The report: every measured number beside the paper's number for the same setting.

From <evaluate.metrics_dir>/*.json (not summary.json) the report stage writes into report.out_dir:
    results.md     the table, the paper's setting, the model and data that produced our numbers
    results.csv    one row per (benchmark, metric): ours, paper, delta, setting, notes,
                   setting_differs (how our setting differs from the paper's), not_resolvable
    summary.json   the stage summary
and, from arcpipe.report_html, the sections beyond the table (ROC and training curves, contact sheets,
the cleaning, what was run) appended to results.md, their SVG figures in figures/, and index.html:
the same content as one self-contained page. The table's cells come from table_cells() here for both.
The paper's table and its evaluation settings live in arcpipe.paper (one place).

Honesty rules:
* A difference (ours - paper) is given only when the measurement was made in the paper's setting
  (arcpipe.paper.PROTOCOLS: the full pair set with its official folds, 1M MegaFace distractors,
  the full IJB template pairs, the same FAR). Otherwise the row says what differs and has no
  difference.
* A rate at a FAR below 1 / (impostor pairs) cannot be resolved: such a row shows no number but
  "not resolvable (n impostor pairs)". Metrics files say so themselves (the value null and a
  `not_resolvable` entry beside it); older ones that still hold a number are judged here from
  their impostor count.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Optional

from .errors import PipelineError
from .paper import MAIN_SETTING, PAPER_NUMBERS, PROTOCOLS, SETTINGS, PaperNumber, count_text

__all__ = ["load_metrics", "measured_numbers", "build_rows", "render_markdown", "render_csv", "table_cells",
           "baseline_rows", "baseline_cells", "data_table", "intro", "models_text", "has_pixels_model"]

# display order and names of the benchmarks
ORDER = ["lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp", "ytf", "megaface", "ijbb", "ijbc"]
TITLES = {"lfw": "LFW", "cfp_fp": "CFP-FP", "cfp_ff": "CFP-FF", "agedb_30": "AgeDB-30", "calfw": "CALFW",
          "cplfw": "CPLFW", "vgg2_fp": "VGG2-FP", "ytf": "YTF", "megaface": "MegaFace", "ijbb": "IJB-B",
          "ijbc": "IJB-C"}
CSV_COLUMNS = ["benchmark", "metric", "label", "ours", "ours_std", "paper", "delta", "paper_setting",
               "paper_uncertain", "note", "model", "data", "data_sha256", "setting_differs", "not_resolvable"]
# where a metrics dict keeps the impostor count its rates were measured on
IMPOSTOR_KEYS = ("impostor", "impostors", "non_mated_scores")


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


def _rate_keys(at: float) -> list[str]:
    """The keys a metrics file may use for rate `at`: '0.0001', '1e-04', ..."""
    at = float(at)
    return list(dict.fromkeys([repr(at), f"{at:.0e}", f"{at:g}", str(at)]))


def _rate_table(d: Any, names: Iterable[str]) -> tuple[Optional[dict], Optional[dict]]:
    """Depth first: (the dict holding a rate mapping named one of `names`, that mapping)."""
    names = tuple(names)
    if isinstance(d, dict):
        for name in names:
            if isinstance(d.get(name), dict):
                return d, d[name]
        for v in d.values():
            found = _rate_table(v, names)
            if found[0] is not None:
                return found
    return None, None


def _impostors_needed(far: float) -> int:
    """The smallest n with n * far >= 1: fewer impostor pairs cannot resolve FAR `far`."""
    n = max(1, math.ceil(1.0 / far))
    while n > 1 and (n - 1) * far >= 1.0 - 1e-9:
        n -= 1
    return n


def _count(v: Any) -> Optional[int]:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return int(v)


def _rate(holder: dict, table: dict, at: float, impostors: Optional[int]) -> tuple[bool, Any, Optional[str]]:
    """(present, value, 'not resolvable (...)' or None) for rate `at` of one rate mapping.

    Not resolvable: the file says so (a `not_resolvable` entry, or null beside an impostor count
    too small), or, in files from before that rule, the impostor count is below 1 / FAR.
    """
    keys = _rate_keys(at)
    present = [k for k in keys if k in table]
    if not present:
        return False, None, None
    value = table[present[0]]
    why = holder.get("not_resolvable") if isinstance(holder.get("not_resolvable"), dict) else {}
    said = next((why[k] for k in keys if k in why), None)
    too_few = impostors is not None and impostors < _impostors_needed(at)
    if said is not None or too_few:
        n = impostors
        if n is None:
            found = re.search(r"(\d[\d,]*) here", str(said))
            n = int(found.group(1).replace(",", "")) if found else None
        return True, None, "not resolvable" + (f" ({n:,} impostor pairs)" if n is not None else "")
    return True, value, None


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


def _pairs_differ(name: str, pairs: Any, folds: Any = None) -> list[str]:
    """How a pair count (and fold count) differ from the paper's protocol for `name`."""
    proto = PROTOCOLS.get(name)
    if proto is None:
        return []
    out = []
    if proto.pairs is not None:
        n = _count(pairs)
        if n is None:
            out.append(f"{proto.pair_unit} not counted in the metrics (the paper: {count_text(proto.pairs)})")
        elif n != proto.pairs:
            out.append(f"{count_text(n)} {proto.pair_unit}, not {count_text(proto.pairs)}")
    if proto.folds is not None and folds is not None and _count(folds) != proto.folds:
        out.append(f"{folds} folds, not {proto.folds}")
    return out


def _verification_differs(name: str, m: dict[str, Any]) -> list[str]:
    folds = m.get("folds")
    if folds is None:
        found = re.match(r"verification-(\d+)fold", str(m.get("protocol", "")))
        folds = int(found.group(1)) if found else None
    out = _pairs_differ(name, m.get("pairs"), folds)
    if name not in PROTOCOLS:
        return out
    dropped, listed = _count(m.get("pairs_dropped")), _count(m.get("pairs_listed"))
    if dropped:
        out.append(f"{dropped:,} of {listed:,} listed pairs dropped" if listed else f"{dropped:,} pairs dropped")
    rule = str(m.get("fold_rule", ""))
    if rule and not rule.startswith("official") and dropped:
        out.append(f"folds: {rule}, not the official ones")
    return out


def measured_numbers(name: str, m: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline numbers of one metrics file: [{metric, label, ours (percent), ours_std, note,
    differs (how the setting differs from the paper's), not_resolvable}]."""
    rows: list[dict[str, Any]] = []
    title = TITLES.get(name, name)
    if str(m.get("protocol", "")).startswith("verification"):
        differs = _verification_differs(name, m)
        rows.append({"metric": "acc", "label": f"{title} accuracy", "ours": _pct(m.get("acc_mean")),
                     "ours_std": _pct(m.get("acc_std")), "differs": differs})
        far = float(m.get("far_target", 1e-3))
        row = {"metric": f"val@far={far:g}", "label": f"{title} VAL@FAR={far:g}",
               "ours": _pct(m.get("val_mean")), "ours_std": _pct(m.get("val_std")), "differs": differs}
        train = m.get("val_train_impostors")
        if isinstance(train, list) and train and all(_count(x) is not None for x in train):
            impostors = min(int(x) for x in train)
        else:  # older files: every impostor pair of the set is an upper bound for a training split
            impostors = _count(m.get("diff_pairs"))
        nr = _rate(m, {repr(far): m.get("val_mean")}, far, impostors)[2]
        if nr:
            row.update(ours=None, ours_std=None, not_resolvable=nr)
        rows.append(row)
    elif name.startswith("ijb"):
        holder, table = _rate_table(m, ("tar_at_far", "tar", "TAR"))
        if table is None:
            return rows
        differs = _pairs_differ(name, holder.get("pairs"))
        paper_set = name in PROTOCOLS
        note = "" if paper_set else "an IJB-style set, not one of the paper's benchmarks (IJB-B, IJB-C)"
        impostors = next((_count(holder[k]) for k in IMPOSTOR_KEYS if k in holder), None)
        for far in (1e-6, 1e-5, 1e-4, 1e-3):
            present, value, nr = _rate(holder, table, far, impostors)
            if present:
                rows.append({"metric": f"tar@{far:.0e}".replace("e-0", "e-"), "ours_std": None,
                             "label": f"{title} 1:1 TAR@FAR={far:g}", "ours": None if nr else _pct(value),
                             "not_resolvable": nr, "differs": differs, "note": note})
    elif name == "megaface":
        rows.extend(_megaface_rows(m))
    elif name == "ytf":
        v = _find_key(m, ("acc_mean", "accuracy", "acc"))
        sd = _find_key(m, ("acc_std", "accuracy_std"))
        res = m.get("metrics") if isinstance(m.get("metrics"), dict) else m
        rows.append({"metric": "acc", "label": "YTF accuracy", "ours": _pct(v), "ours_std": _pct(sd),
                     "differs": _pairs_differ(name, res.get("pairs"), res.get("folds"))})
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
    distractors = _count(r.get("distractors"))
    if distractors is None:
        distractors = int(size) if str(size).isdigit() else None
    want = PROTOCOLS["megaface"].distractors
    if distractors is None:
        differs = ["distractor count not recorded in the metrics"]
    elif distractors != want:
        differs = [f"{count_text(distractors)} distractors, not {count_text(want)}"]
    else:
        differs = []
    note = (f"{distractors:,} distractors" if distractors is not None and not differs else "") + \
        ("" if mode == "refined" else ", raw lists (no noise lists given)")
    note = note.lstrip(", ")
    rows = []
    rank1 = (r.get("rank") or {}).get("1")
    if rank1 is not None:
        rows.append({"metric": "id_rank1_refined" if mode == "refined" else "id_rank1_raw",
                     "label": f"MegaFace rank-1 Id ({mode})", "ours": _pct(rank1), "ours_std": None, "note": note,
                     "differs": differs})
    holder, table = (r, r.get("tar_at_far")) if isinstance(r.get("tar_at_far"), dict) else _rate_table(r, ("tar",))
    if table is not None:
        impostors = next((_count(holder[k]) for k in IMPOSTOR_KEYS if k in holder), None)
        present, value, nr = _rate(holder, table, 1e-6, impostors)
        if present:
            rows.append({"metric": "ver_tar@1e-6_refined" if mode == "refined" else "ver_tar@1e-6_raw",
                         "label": f"MegaFace Ver TAR@FAR=1e-6 ({mode})", "ours": None if nr else _pct(value),
                         "ours_std": None, "note": note, "differs": differs, "not_resolvable": nr})
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
        if name == BASELINES:
            continue
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
    differs = list(r.get("differs") or [])
    nr = r.get("not_resolvable")
    notes = []
    if differs:
        notes.append("setting differs: " + "; ".join(differs))
    if r.get("note"):
        notes.append(r["note"])
    if p is not None and p.note:
        notes.append(p.note)
    for o in other:
        notes.append(f"{SETTINGS[o.setting].describe()}: {o.value:g}")
    if p is not None and ours is None and not nr:
        proto = PROTOCOLS.get(name)
        notes.append("not measured" + (f" (the paper: {proto.describe()})" if proto is not None else ""))
    comparable = p is not None and ours is not None and not differs
    return {
        "benchmark": name,
        "metric": r["metric"],
        "label": r["label"] if ours is not None or nr else (p.label if p is not None else r["label"]),
        "ours": ours,
        "ours_std": r.get("ours_std"),
        "paper": p.value if p is not None else None,
        "delta": (ours - p.value) if comparable else None,
        "paper_setting": p.setting if p is not None else "",
        "paper_uncertain": bool(p.uncertain) if p is not None else False,
        "note": "; ".join(notes),
        "model": model,
        "data": data,
        "data_sha256": sha,
        "setting_differs": "; ".join(differs),
        "not_resolvable": nr or "",
    }


def _fmt(v: Optional[float], digits: int = 2, sign: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


INTRO = ("Paper column: {source}; setting {setting}. Numbers in percent. {tilde} marks a paper figure that is "
         "uncertain; {dash} means not measured / no paper figure. A difference is shown only where our measurement "
         "used the paper's evaluation setting (the full pair sets with their official folds, 1M MegaFace "
         "distractors, the full IJB template pairs, the same FAR); where it did not, the difference cell is empty "
         "and the note says what differs. A TAR or VAL at a FAR below 1 / (impostor pairs) cannot be measured and "
         "is shown as not resolvable.")
PIXELS_WARNING = ("The pixels model is a training-free sanity baseline, not a face model: its numbers show what the "
                  "pipeline and the pairs alone give, and are not comparable to the paper's.")
CLOSING = ("The paper's numbers are for its own trained model; ours are for the model named above, on the data "
           "files listed (their sha256 identifies the exact pack).")
TABLE_HEADER = ("benchmark", "metric", "ours", "paper", "ours − paper", "notes")
BASELINE_HEADER = ("set", "baseline", "baseline accuracy", "ours", "ours − baseline")
DATA_HEADER = ("benchmark", "file", "sha256", "pairs", "pairs listed", "pairs dropped", "folds")


def intro(code=lambda s: f"`{s}`", escape=lambda s: s) -> str:
    """The paragraph above the table; `code` marks the symbols (Markdown backticks by default),
    `escape` the text around them (HTML)."""
    s = SETTINGS[MAIN_SETTING]
    return escape(INTRO).format(source=escape(s.source), setting=escape(s.describe()), tilde=code("~"),
                                dash=code("—"))


def models_text(rows: list[dict[str, Any]]) -> str:
    """'Ours: ...' naming every model behind the measured rows ('' when none)."""
    models = sorted({r["model"] for r in rows if r["model"]})
    return "Ours: " + "; ".join(models) if models else ""


def has_pixels_model(metrics: dict[str, dict[str, Any]]) -> bool:
    return any(isinstance(m.get("model"), dict) and m["model"].get("kind") == "pixels" for m in metrics.values())


def table_cells(r: dict[str, Any]) -> tuple[str, str, str, str, str, str]:
    """One row of the table as text cells (TABLE_HEADER), the same in results.md and index.html."""
    ours = _fmt(r["ours"])
    if r["ours"] is not None and r["ours_std"] is not None and r["metric"] == "acc":
        ours += f" ± {r['ours_std']:.2f}"
    if r["ours"] is None and r["not_resolvable"]:
        ours = r["not_resolvable"]
    paper = _fmt(r["paper"])
    if r["paper_uncertain"] and r["paper"] is not None:
        paper = "~" + paper
    # no difference where the settings differ: the cell stays empty, the note says why
    differs = r["setting_differs"] and r["paper"] is not None and r["delta"] is None
    delta = "" if differs else _fmt(r["delta"], sign=True)
    return (TITLES.get(r["benchmark"], r["benchmark"]), r["label"], ours, paper, delta, r["note"])


def data_table(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    """The data files behind the numbers as text cells (DATA_HEADER), one row per benchmark."""
    def cell(v: Any) -> str:
        return "" if v is None else (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))

    out = []
    for n, d in sorted((n, m.get("data")) for n, m in metrics.items() if isinstance(m.get("data"), dict)):
        m = metrics[n]
        folds = f"{cell(m.get('folds'))}, {m['fold_rule']}" if m.get("fold_rule") else cell(m.get("folds"))
        out.append((n, str(d.get("path", "")), str(d.get("sha256", ""))[:16], cell(m.get("pairs")),
                    cell(m.get("pairs_listed")), cell(m.get("pairs_dropped")), folds))
    return out


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |\n"


def render_markdown(rows: list[dict[str, Any]], metrics: dict[str, dict[str, Any]]) -> str:
    out = io.StringIO()
    out.write("# Results beside the ArcFace paper\n\n")
    out.write(intro() + "\n\n")
    if models_text(rows):
        out.write(models_text(rows) + "\n\n")
    if has_pixels_model(metrics):
        out.write(f"**{PIXELS_WARNING}**\n\n")
    out.write(_md_row(TABLE_HEADER) + "|---|---|---:|---:|---:|---|\n")
    for r in rows:
        out.write(_md_row(table_cells(r)))
    out.write(render_baselines(metrics))
    data_rows = data_table(metrics)
    if data_rows:
        out.write("\n## Data\n\n" + _md_row(DATA_HEADER) + "|---|---|---|---:|---:|---:|---|\n")
        for cells in data_rows:
            out.write(_md_row(cells))
    out.write("\n" + CLOSING + "\n")
    return out.getvalue()


BASELINES = "baselines"  # metrics/baselines.json: other models on the same verification packs


def baseline_rows(metrics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """[{set, baseline, ours, theirs, margin}] (accuracy in percent) for every baseline model and
    verification set that the main model was also judged on."""
    base = metrics.get(BASELINES) or {}
    rows = []
    for model, entry in sorted((base.get("models") or {}).items()):
        for set_name, v in sorted((entry.get("verification") or {}).items()):
            ours = _pct((metrics.get(set_name) or {}).get("acc_mean"))
            theirs = _pct(v.get("acc_mean"))
            rows.append({"set": set_name, "baseline": model, "model": _model_text(entry),
                         "ours": ours, "theirs": theirs,
                         "margin": None if ours is None or theirs is None else ours - theirs})
    return rows


BASELINES_INTRO = "The same verification packs, the same protocol, other models: what the model above must beat."


def baseline_cells(r: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """One baseline row as text cells (BASELINE_HEADER)."""
    return (TITLES.get(r["set"], r["set"]), f"{r['baseline']} ({r['model']})", _fmt(r["theirs"]), _fmt(r["ours"]),
            _fmt(r["margin"], sign=True))


def render_baselines(metrics: dict[str, dict[str, Any]]) -> str:
    rows = baseline_rows(metrics)
    if not rows:
        return ""
    out = io.StringIO()
    out.write(f"\n## Baselines\n\n{BASELINES_INTRO}\n\n" + _md_row(BASELINE_HEADER) + "|---|---|---:|---:|---:|\n")
    for r in rows:
        out.write(_md_row(baseline_cells(r)))
    return out.getvalue()


def render_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else (repr(round(r[k], 6)) if isinstance(r[k], float) else r[k]))
                    for k in CSV_COLUMNS})
    return buf.getvalue()


def _rounded(v: Any, digits: int = 4) -> Any:
    return round(float(v), digits) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def headline(rows: list[dict[str, Any]], metrics: dict[str, dict[str, Any]],
             training: Optional[dict[str, dict[str, Any]]] = None,
             cleaning: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The few numbers that say how a run went, for `dvc exp show` and `dvc metrics diff`: each
    benchmark's measured figures (percent), each baseline's accuracy beside them, the trainings'
    final loss and verification accuracy (their DVCLive metrics.json), and the cleaning counts and
    precision / recall per noise kind. The per-benchmark files stay the detailed record."""
    out: dict[str, Any] = {}
    for r in rows:
        if r["ours"] is not None:
            out.setdefault(r["benchmark"], {})[r["metric"]] = _rounded(r["ours"], 2)
    for b in baseline_rows(metrics):
        out.setdefault("baselines", {}).setdefault(b["baseline"], {})[b["set"]] = _rounded(b["theirs"], 2)
    for name, live in sorted((training or {}).items()):
        loss = (live.get("train") or {}).get("loss")
        verify = {k: _rounded((v or {}).get("acc") * 100, 2) for k, v in sorted((live.get("verify") or {}).items())
                  if isinstance((v or {}).get("acc"), (int, float))}
        out[name] = {"step": live.get("step"), "loss": _rounded(loss), **{f"verify_{k}": v for k, v in verify.items()}}
    if cleaning:
        c = {"images_in": cleaning.get("images_in"), "images_out": cleaning.get("images_out"),
             "identities_out": cleaning.get("identities_out")}
        for kind, q in sorted(((cleaning.get("quality") or {}).get("kinds") or {}).items()):
            c[kind] = {"precision": _rounded(q.get("precision")), "recall": _rounded(q.get("recall"))}
            if q.get("undetected_faces"):  # non-faces: the precision of what the detector found, too
                c[kind]["precision_detected"] = _rounded(q.get("precision_detected"))
        out["cleaning"] = c
    return out
