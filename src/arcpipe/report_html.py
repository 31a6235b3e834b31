"""The report beyond the table: curves, images, the cleaning and what was run, and index.html.

    inputs = inputs_from_params(params)                  # where each section's files are
    extras = gather(inputs, params, params_files)        # read them; absent ones become lines
    md = render_markdown(rows, metrics) + render_markdown_extras(extras, out_dir)
    figures = figure_files(extras)                       # {"roc.svg": svg text, ...} for figures/
    page = render_html(rows, metrics, extras)            # index.html, one self-contained file

Sections: ROC curves (<evaluate.plots_dir>/roc_*.csv), training curves (each DVCLive folder's
plots/metrics/**/*.tsv), the alignment contact sheets (JPEG), the cleaning (the clean stage's
metrics file and its two histogram PNGs) and what was run (the resolved params, the outs' md5 as
dvc.lock records them, the code version, the machine). An input that is not there is never an
error: its section says it was not produced (or could not be read, and why).

index.html needs nothing beside it: inline CSS, images as data: URIs, curves as inline SVG drawn
here (the same SVG text as figures/*.svg, which results.md links), no script, no network. The same
inputs on the same machine give the same bytes: nothing in it depends on the time of day; only the
code version and the machine lines change with where it was made.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import yaml

from .report import (BASELINE_HEADER, BASELINES_INTRO, CLOSING, DATA_HEADER, PIXELS_WARNING, TABLE_HEADER,
                     baseline_cells, baseline_rows, data_table, has_pixels_model, intro, models_text, table_cells)

__all__ = ["Series", "Chart", "Picture", "RunInfo", "Extras", "ExtraInputs", "inputs_from_params", "gather",
           "read_roc_curves", "read_training_curves", "read_pictures", "read_cleaning", "read_checksums",
           "code_version", "machine_info", "svg_chart", "figure_files", "render_markdown_extras", "render_html"]

# the align stage's contact sheet (arcpipe.align.aligned_set.CONTACT_SHEET) and the clean stage's
# histograms (arcpipe.stages.clean.OUTPUTS), named here so the report does not import those stages
CONTACT_SHEET = "contact_sheet.jpg"
CLEAN_PLOTS = ("intra_similarity.png", "nearest_centre.png")
CLEAN_PLOT_TITLES = {"intra_similarity.png": "each image's cosine to its identity's centre, before cleaning",
                     "nearest_centre.png": "each identity's cosine to the nearest other and evaluation identity"}
FIGURES = "figures"            # report.out_dir/figures/*.svg: the curves, linked from results.md
MAX_POINTS = 1500              # a curve with more points is drawn at this many, evenly spread
VERIFY_BYTES = 16 << 20        # dvc.lock file outs up to this size are checked against the file here
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
SECTIONS = (("benchmarks", "Benchmarks beside the paper"), ("roc", "ROC curves"), ("training", "Training curves"),
            ("alignment", "Alignment contact sheets"), ("cleaning", "Cleaning"), ("run", "What was run"))


# --- what the sections hold --------------------------------------------------------------------

@dataclass(frozen=True)
class Series:
    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    dashed: bool = False
    points: int = 0                # points to draw (x, y hold fewer when there were over MAX_POINTS)


@dataclass(frozen=True)
class Chart:
    slug: str                      # file name (figures/<slug>.svg) and HTML anchor
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    x_log: bool = False
    y_range: Optional[tuple[float, float]] = None
    sources: tuple[str, ...] = ()  # the files drawn
    width: int = 720
    height: int = 360


@dataclass(frozen=True)
class Picture:
    title: str
    path: str
    mime: str
    data: bytes

    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass
class RunInfo:
    params_files: list[str]
    params_yaml: str
    lock_file: str
    checksums: list[dict[str, Any]]       # {stage, path, md5, size, nfiles, check}
    code: dict[str, Any]                  # {describe, commit, changes}
    machine: list[tuple[str, str]]


@dataclass
class Extras:
    roc: list[Chart] = field(default_factory=list)
    training: list[Chart] = field(default_factory=list)
    sheets: list[Picture] = field(default_factory=list)
    cleaning: Optional[dict[str, Any]] = None
    cleaning_source: str = ""
    cleaning_pictures: list[Picture] = field(default_factory=list)
    run: Optional[RunInfo] = None
    # per section key (roc, training, alignment, cleaning, run): what was not produced or not readable
    missing: dict[str, list[str]] = field(default_factory=dict)

    def note(self, section: str, line: str) -> None:
        self.missing.setdefault(section, []).append(line)


@dataclass(frozen=True)
class ExtraInputs:
    plots_dir: str
    training: dict[str, str]
    contact_sheets: dict[str, str]
    clean_metrics: str
    clean_dir: str
    lock_file: str = "dvc.lock"


def inputs_from_params(params) -> ExtraInputs:
    """Where the sections' files are: report's own keys, else where their stages write them."""
    r = params.report
    training = r.training if r.training is not None else {
        "train": params.train.live_dir, "train_bootstrap": params.train_bootstrap.live_dir}
    sheets = r.contact_sheets if r.contact_sheets is not None else {
        name: _join(params.align.out_dir, name, CONTACT_SHEET) for name in params.detect.datasets}
    return ExtraInputs(plots_dir=params.evaluate.plots_dir, training=dict(training), contact_sheets=dict(sheets),
                       clean_metrics=r.clean_metrics or params.clean.metrics,
                       clean_dir=r.clean_dir or params.clean.out_dir)


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts)


# --- reading the inputs --------------------------------------------------------------------------

def gather(inputs: ExtraInputs, params=None, params_files: Sequence[str] = ()) -> Extras:
    """Every section's content; what is absent or unreadable is a line in `missing`, never an error."""
    ex = Extras()
    ex.roc = read_roc_curves(inputs.plots_dir, ex)
    ex.training = read_training_curves(inputs.training, ex)
    ex.sheets = read_pictures([(f"contact sheet of {n}", p) for n, p in inputs.contact_sheets.items()],
                              ex, "alignment", "the align stage")
    if not inputs.contact_sheets:
        ex.note("alignment", "no contact sheets asked for (no detect.datasets, or report.contact_sheets is {})")
    ex.cleaning = read_cleaning(inputs.clean_metrics, ex)
    ex.cleaning_source = inputs.clean_metrics
    ex.cleaning_pictures = read_pictures([(CLEAN_PLOT_TITLES[n], _join(inputs.clean_dir, n)) for n in CLEAN_PLOTS],
                                         ex, "cleaning", "the clean stage")
    dumped = params.model_dump(mode="json") if params is not None else {}
    ex.run = RunInfo(params_files=list(params_files),
                     params_yaml=yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True, width=100),
                     lock_file=inputs.lock_file, checksums=read_checksums(inputs.lock_file, ex),
                     code=code_version(), machine=machine_info())
    return ex


def _floats(rows: Iterable[dict], xk: str, yk: str) -> tuple[list[float], list[float]]:
    """The rows' finite (x, y) pairs; blank or non-numeric cells are left out."""
    xs, ys = [], []
    for row in rows:
        try:
            x, y = float(row[xk]), float(row[yk])
        except (TypeError, ValueError, KeyError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def _thin(xs: list[float], ys: list[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if len(xs) <= MAX_POINTS:
        return tuple(xs), tuple(ys)
    idx = sorted({round(i * (len(xs) - 1) / (MAX_POINTS - 1)) for i in range(MAX_POINTS)})
    return tuple(xs[i] for i in idx), tuple(ys[i] for i in idx)


def _read_table(path: Path, delimiter: str) -> tuple[list[str], list[dict]]:
    text = path.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def read_roc_curves(plots_dir: str, ex: Extras) -> list[Chart]:
    """One chart with every <plots_dir>/roc_<name>.csv (columns fpr, tpr), FPR on a log axis."""
    d = Path(plots_dir)
    files = sorted(d.glob("roc_*.csv")) if d.is_dir() else []
    if not files:
        ex.note("roc", f"not produced: no ROC files {_join(plots_dir, 'roc_*.csv')} (the evaluate stage writes them)")
        return []
    series, sources = [], []
    for f in files:
        name, shown = f.stem[len("roc_"):], _join(plots_dir, f.name)
        try:
            cols, rows = _read_table(f, ",")
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            ex.note("roc", f"{shown}: not readable ({_first_line(e)})")
            continue
        if "fpr" not in cols or "tpr" not in cols:
            ex.note("roc", f"{shown}: no fpr and tpr columns (has {', '.join(cols) or 'none'})")
            continue
        xs, ys = _floats(rows, "fpr", "tpr")
        pos = [(x, y) for x, y in zip(xs, ys) if x > 0]   # FPR 0 has no place on a log axis
        if not pos:
            ex.note("roc", f"{shown}: " + ("no point with a false positive rate above 0 to draw on a log axis"
                                           if xs else "no numeric fpr, tpr row"))
            continue
        x, y = _thin([p[0] for p in pos], [p[1] for p in pos])
        series.append(Series(name, x, y, points=len(pos)))
        sources.append(shown)
    if not series:
        return []
    k0 = math.floor(math.log10(min(min(s.x) for s in series)))
    grid = tuple(10.0 ** (k0 - k0 * i / 64) for i in range(65))   # TPR = FPR is a curve on a log axis
    chance = Series("chance (TPR = FPR)", grid, grid, dashed=True)
    return [Chart("roc", "ROC: true positive rate against false positive rate", "false positive rate (log scale)",
                  "true positive rate", tuple(series) + (chance,), x_log=True, y_range=(0.0, 1.0),
                  sources=tuple(sources), height=400)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "figure"


def read_training_curves(runs: dict[str, str], ex: Extras) -> list[Chart]:
    """One chart per DVCLive plots file: <folder>/plots/metrics/<metric path>.tsv (step, value)."""
    charts: list[Chart] = []
    slugs: set[str] = set()
    for run in runs:
        folder = Path(runs[run]) / "plots" / "metrics"
        shown_dir = _join(runs[run], "plots", "metrics")
        files = sorted(folder.rglob("*.tsv"), key=lambda p: p.relative_to(folder).as_posix()) if folder.is_dir() else []
        if not files:
            ex.note("training", f"{run}: not produced: no training curves in {shown_dir} (DVCLive writes them "
                                f"while the {run} stage trains)")
            continue
        for f in files:
            metric = f.relative_to(folder).with_suffix("").as_posix()
            shown = _join(shown_dir, metric + ".tsv")
            try:
                cols, rows = _read_table(f, "\t")
            except (OSError, UnicodeDecodeError, csv.Error) as e:
                ex.note("training", f"{shown}: not readable ({_first_line(e)})")
                continue
            values = [c for c in cols if c not in ("step", "timestamp")]
            y_key = f.stem if f.stem in values else (values[-1] if values else None)
            if "step" not in cols or y_key is None:
                ex.note("training", f"{shown}: no step and value columns (has {', '.join(cols) or 'none'})")
                continue
            xs, ys = _floats(rows, "step", y_key)
            if not xs:
                ex.note("training", f"{shown}: no finite value to draw")
                continue
            x, y = _thin(xs, ys)
            slug = base = _slug(f"training-{run}-{metric}")
            k = 2
            while slug in slugs:
                slug, k = f"{base}-{k}", k + 1
            slugs.add(slug)
            charts.append(Chart(slug, f"{run}: {metric}", "step", y_key, (Series(metric, x, y, points=len(xs)),),
                                sources=(shown,), width=560, height=300))
    return charts


def _mime(data: bytes) -> Optional[str]:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


def read_pictures(wanted: Sequence[tuple[str, str]], ex: Extras, section: str, producer: str) -> list[Picture]:
    """The PNG / JPEG files (title, path) that are there; a line for each that is not."""
    out = []
    for title, path in wanted:
        p = Path(path)
        if not p.is_file():
            ex.note(section, f"{title}: not produced ({path} does not exist; {producer} writes it)")
            continue
        try:
            data = p.read_bytes()
        except OSError as e:
            ex.note(section, f"{title}: {path} not readable ({_first_line(e)})")
            continue
        mime = _mime(data)
        if mime is None:
            ex.note(section, f"{title}: {path} is not a PNG or JPEG image")
            continue
        out.append(Picture(title, path, mime, data))
    return out


def read_cleaning(path: str, ex: Extras) -> Optional[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        ex.note("cleaning", f"not produced: no cleaning metrics ({path} does not exist; the clean stage writes it)")
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        ex.note("cleaning", f"{path}: not a readable JSON file ({_first_line(e)})")
        return None
    if not isinstance(data, dict):
        ex.note("cleaning", f"{path}: expected a JSON object, got {type(data).__name__}")
        return None
    return data


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checksums(lock_file: str, ex: Extras, skip: Iterable[str] = ("report",)) -> list[dict[str, Any]]:
    """Each stage's outs as dvc.lock records them (the report's own entry left out), each checked
    against the file here where that is cheap: a file up to VERIFY_BYTES hashed, a larger one sized."""
    p = Path(lock_file)
    if not p.is_file():
        ex.note("run", f"data checksums not recorded: {lock_file} does not exist (dvc repro writes it; "
                       "Snakemake and runs by hand do not)")
        return []
    try:
        lock = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        ex.note("run", f"{lock_file}: not readable ({_first_line(e)})")
        return []
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict):
        ex.note("run", f"{lock_file}: no stages in it")
        return []
    skip = set(skip)
    out = []
    for stage, entry in stages.items():
        if str(stage).split("@")[0] in skip or not isinstance(entry, dict):
            continue
        for o in entry.get("outs") or []:
            if not isinstance(o, dict) or "path" not in o:
                continue
            md5 = str(o.get("md5") or o.get("etag") or "")
            out.append({"stage": str(stage), "path": str(o["path"]), "md5": md5, "size": o.get("size"),
                        "nfiles": o.get("nfiles"), "check": _check_out(Path(str(o["path"])), o, md5)})
    return out


def _check_out(path: Path, o: dict, md5: str) -> str:
    if md5.endswith(".dir"):
        return "folder (not checked)" if path.is_dir() else "absent here"
    if not path.is_file():
        return "absent here"
    size = path.stat().st_size
    if isinstance(o.get("size"), int) and size != o["size"]:
        return f"differs here ({size:,} bytes, not {o['size']:,})"
    if o.get("hash") != "md5" or not md5:
        return "not checked (an older DVC hash)"
    if size > VERIFY_BYTES:
        return "same size here (not hashed)"
    return "matches the file here" if _md5(path) == md5 else "differs here (md5)"


def _git(args: list[str], cwd: Path) -> Optional[str]:
    exe = shutil.which("git")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=20,
                           env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def code_version(where: Optional[Path] = None) -> dict[str, Any]:
    """{describe, commit, changes}: the checkout the arcpipe code runs from ("unknown" outside git);
    changes lists the tracked files under src/ and scripts/ that differ from that commit."""
    here = Path(where) if where is not None else Path(__file__).resolve().parent
    top = (_git(["rev-parse", "--show-toplevel"], here) or "").strip() if here.is_dir() else ""
    commit = (_git(["rev-parse", "HEAD"], Path(top)) or "").strip() if top else ""
    if not top or not commit:
        return {"describe": "unknown", "commit": "unknown", "changes": []}
    describe = (_git(["describe", "--always", "--tags", "--abbrev=12"], Path(top)) or "").strip() or commit[:12]
    status = _git(["status", "--porcelain=v1", "--untracked-files=no", "--", "src", "scripts"], Path(top)) or ""
    changes = sorted(line[3:] for line in status.splitlines() if len(line) > 3)
    return {"describe": describe, "commit": commit, "changes": changes}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> list[tuple[str, str]]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    return [("platform", platform.platform()), ("machine", platform.machine() or "unknown"),
            ("CPUs", f"{os.cpu_count() or 'unknown'} ({usable} usable by this process)"),
            ("python", f"{platform.python_implementation()} {platform.python_version()}"),
            ("torch", _version("torch")), ("numpy", _version("numpy")), ("arcpipe", _version("arcpipe"))]


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


# --- SVG -----------------------------------------------------------------------------------------

def _nice(lo: float, hi: float, n: int = 5) -> tuple[float, float, list[float]]:
    if not hi > lo:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    start, end = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    count = int(round((end - start) / step))
    return start, end, [start + i * step for i in range(count + 1)]


def _tick_text(v: float, step: float) -> str:
    if abs(v) < step * 1e-6:
        return "0"
    if abs(v) >= 1e5 or step < 1e-4:
        return f"{v:.3g}"
    digits = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step * 10 ** digits) % 1:
        digits += 1
    if round(step * 10 ** digits, 6) % 1:
        digits += 1
    return f"{v:.{digits}f}"


def _decade_text(k: int) -> str:
    return f"{10.0 ** k:g}" if -3 <= k <= 3 else f"1e{k}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def svg_chart(chart: Chart) -> str:
    """The chart as a standalone SVG document (also valid inline in HTML): axes, ticks, grid, one
    polyline per series, the legend under the plot. Coordinates at 0.1 px: the same data, the same text."""
    width, height = chart.width, chart.height
    left, right, top, bottom = 72, 20, 36, 52
    pw, ph = width - left - right, height - top - bottom
    legend_top = top + ph + bottom
    total = legend_top + 18 * len(chart.series) + 6
    xs = [x for s in chart.series for x in s.x if not chart.x_log or x > 0]
    ys = [y for s in chart.series for y in s.y]
    if chart.x_log:
        k0 = math.floor(math.log10(min(xs))) if xs else -3
        k1 = max(math.ceil(math.log10(max(xs))) if xs else 0, k0 + 1)
        x0, x1 = float(k0), float(k1)
        xticks = [(float(k), _decade_text(k)) for k in range(k0, k1 + 1)]
    else:
        x0, x1, xt = _nice(min(xs) if xs else 0.0, max(xs) if xs else 1.0)
        step = xt[1] - xt[0] if len(xt) > 1 else 1.0
        xticks = [(v, _tick_text(v, step)) for v in xt]
    if chart.y_range is not None:
        y0, y1, yt = _nice(*chart.y_range)
    else:
        y0, y1, yt = _nice(min(ys) if ys else 0.0, max(ys) if ys else 1.0)
    ystep = yt[1] - yt[0] if len(yt) > 1 else 1.0

    def px(x: float) -> float:
        v = math.log10(x) if chart.x_log else x
        return left + (v - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total}" viewBox="0 0 {width} {total}" '
           f'role="img" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
           f"<title>{_e(chart.title)}</title>",
           f'<rect x="0" y="0" width="{width}" height="{total}" fill="#ffffff"/>',
           f'<text x="{width / 2:.1f}" y="22" text-anchor="middle" font-size="14" font-weight="bold">'
           f"{_e(chart.title)}</text>"]
    for v, label in xticks:
        x = left + (v - x0) / (x1 - x0) * pw
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{_e(label)}</text>')
    for v in yt:
        y = py(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(_tick_text(v, ystep))}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333333"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph + 36}" text-anchor="middle">{_e(chart.x_label)}</text>')
    out.append(f'<text x="16" y="{top + ph / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + ph / 2:.1f})">{_e(chart.y_label)}</text>')
    for i, s in enumerate(chart.series):
        colour = "#888888" if s.dashed else COLOURS[i % len(COLOURS)]
        dash = ' stroke-dasharray="5 4"' if s.dashed else ""
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(s.x, s.y) if not chart.x_log or x > 0)
        if pts:
            out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.6"{dash}/>')
        ly = legend_top + 18 * i + 6
        label = s.label + (f" ({s.points:,} points, drawn at {len(s.x):,})" if s.points > len(s.x) > 0 else "")
        out.append(f'<line x1="{left}" y1="{ly:.1f}" x2="{left + 24}" y2="{ly:.1f}" stroke="{colour}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{left + 30}" y="{ly + 4:.1f}">{_e(label)}</text>')
    if not xs:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{top + ph / 2:.1f}" text-anchor="middle">no points</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def figure_files(extras: Extras) -> dict[str, str]:
    """{file name under figures/: SVG text} for every chart."""
    return {f"{c.slug}.svg": svg_chart(c) for c in extras.roc + extras.training}


# --- Markdown ------------------------------------------------------------------------------------

def _rel(path: str, out_dir: str | os.PathLike) -> str:
    """A link from out_dir to `path` (both as given, relative to the working folder)."""
    return Path(os.path.relpath(Path(path), Path(out_dir))).as_posix()


def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _md_missing(lines: Sequence[str]) -> str:
    return "".join(f"- _{_md_cell(line)}_\n" for line in lines)


def _cleaning_tables(m: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(totals [(what, value)], per rule [(rule, images, identities)], quality [(kind, injected,
    caught, missed, precision, recall)]) as text cells."""
    def num(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    totals = [(k.replace("_", " "), num(m[k])) for k in ("images_in", "images_out", "identities_in", "identities_out")
              if k in m]
    removed = m.get("removed") if isinstance(m.get("removed"), dict) else {}
    rules = [(str(rule), num((v or {}).get("images")), num((v or {}).get("identities")))
             for rule, v in removed.items() if isinstance(v, dict) or v is None]
    kinds = (m.get("quality") or {}).get("kinds") if isinstance(m.get("quality"), dict) else None
    quality = [(str(k), *(num((v or {}).get(c)) for c in ("injected", "caught", "missed", "precision", "recall")))
               for k, v in (kinds or {}).items() if isinstance(v, dict)]
    return totals, rules, quality


QUALITY_HEADER = ("noise kind", "injected", "caught", "missed", "precision", "recall")
RULES_HEADER = ("rule", "images removed", "identities removed")
CHECKSUM_HEADER = ("stage", "output", "md5", "size", "files", "here")


def _checksum_cells(c: dict[str, Any]) -> tuple[str, ...]:
    size = f"{c['size']:,}" if isinstance(c.get("size"), int) else ""
    files = f"{c['nfiles']:,}" if isinstance(c.get("nfiles"), int) else ""
    return (c["stage"], c["path"], c["md5"], size, files, c["check"])


def _curve_text(c: Chart) -> list[str]:
    out = []
    for s, src in zip([s for s in c.series if not s.dashed], c.sources):
        if c.x_log:
            out.append(f"{s.label}: {src} ({s.points:,} points with a false positive rate above 0, the smallest "
                       f"{min(s.x):.3g})")
        else:
            lo = min(range(len(s.y)), key=lambda i: s.y[i])
            out.append(f"{src}: steps {s.x[0]:g} to {s.x[-1]:g} ({s.points:,} points); first {s.y[0]:.4g}, "
                       f"last {s.y[-1]:.4g}, lowest {s.y[lo]:.4g} at step {s.x[lo]:g}")
    return out


def render_markdown_extras(extras: Extras, out_dir: str | os.PathLike) -> str:
    """The sections beyond the table, for the end of results.md: figures/*.svg and the images
    linked (relative to out_dir), the rest as text."""
    out = io.StringIO()
    out.write("\n## ROC curves\n\n")
    for c in extras.roc:
        out.write(f"![{c.title}]({FIGURES}/{c.slug}.svg)\n\n")
        out.write("".join(f"- {_md_cell(t)}\n" for t in _curve_text(c)))
    out.write(_md_missing(extras.missing.get("roc", [])))
    out.write("\n## Training curves\n\n")
    for c in extras.training:
        out.write(f"![{c.title}]({FIGURES}/{c.slug}.svg)\n\n")
        out.write("".join(f"- {c.title.split(':')[0]}: {_md_cell(t)}\n" for t in _curve_text(c)) + "\n")
    out.write(_md_missing(extras.missing.get("training", [])))
    out.write("\n## Alignment contact sheets\n\n")
    if extras.sheets:
        out.write("Aligned crops with their landmarks (green) over the template (red), and a few rejects "
                  "with their reasons.\n\n")
    for p in extras.sheets:
        out.write(f"![{p.title}]({_rel(p.path, out_dir)})\n\n{p.title}: {p.path} ({len(p.data):,} bytes)\n\n")
    out.write(_md_missing(extras.missing.get("alignment", [])))
    out.write("\n## Cleaning\n\n")
    if extras.cleaning is not None:
        totals, rules, quality = _cleaning_tables(extras.cleaning)
        out.write(f"From {extras.cleaning_source}: " + ", ".join(f"{k} {v}" for k, v in totals) + ".\n\n")
        if rules:
            out.write("| " + " | ".join(RULES_HEADER) + " |\n|---|---:|---:|\n")
            out.write("".join(f"| {' | '.join(map(_md_cell, r))} |\n" for r in rules) + "\n")
        if quality:
            out.write("Against the sample's known noise:\n\n| " + " | ".join(QUALITY_HEADER) + " |\n"
                      "|---|---:|---:|---:|---:|---:|\n")
            out.write("".join(f"| {' | '.join(map(_md_cell, q))} |\n" for q in quality) + "\n")
    for p in extras.cleaning_pictures:
        out.write(f"![{p.title}]({_rel(p.path, out_dir)})\n\n")
    out.write(_md_missing(extras.missing.get("cleaning", [])))
    out.write("\n## What was run\n\n")
    run = extras.run
    if run is not None:
        code = run.code
        out.write(f"- code: {_md_cell(code['describe'])} (commit {code['commit']})"
                  + (f"; changed since: {', '.join(code['changes'])}" if code["changes"] else "") + "\n")
        for k, v in run.machine:
            out.write(f"- {k}: {_md_cell(v)}\n")
        out.write(f"- params: {', '.join(run.params_files) or '(defaults)'}, resolved below\n")
        if run.checksums:
            out.write(f"\nData checksums, as {run.lock_file} records each stage's outputs:\n\n| "
                      + " | ".join(CHECKSUM_HEADER) + " |\n|---|---|---|---:|---:|---|\n")
            out.write("".join(f"| {' | '.join(map(_md_cell, _checksum_cells(c)))} |\n" for c in run.checksums))
        out.write("\n" + _md_missing(extras.missing.get("run", [])))
        out.write("\nThe resolved params:\n\n```yaml\n" + run.params_yaml + "```\n")
    return out.getvalue()


# --- HTML ----------------------------------------------------------------------------------------

CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;color:#1b1b1b;background:#fafafa;margin:0;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:16px 24px 48px;background:#fff}
h1{font-size:1.6em;margin:.4em 0}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.8em}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #d0d0d0;padding:3px 7px;vertical-align:top;text-align:left}
th{background:#f0f0f0}tbody tr:nth-child(even){background:#f8f8f8}td.num{text-align:right;white-space:nowrap}
td.nr{color:#8a4b00}code,pre{font-family:"DejaVu Sans Mono",monospace;font-size:.85em}
pre{background:#f5f5f5;border:1px solid #e0e0e0;padding:8px;overflow-x:auto}
figure{margin:1em 0}figure img,figure svg{max-width:100%;height:auto;border:1px solid #e0e0e0}
figcaption{font-size:.85em;color:#555}.missing{color:#7a5d00;font-style:italic}
.warning{font-weight:bold;color:#a00000}.grid{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.grid>figure{flex:0 1 auto;max-width:calc(50% - 8px);margin:.5em 0}
""".strip()
NUMERIC = {"ours", "paper", "ours − paper", "baseline accuracy", "ours − baseline", "pairs", "pairs listed",
           "pairs dropped", "size", "files", "images removed", "identities removed", "injected", "caught",
           "missed", "precision", "recall"}


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], table_id: str = "",
           row_attrs: Optional[Sequence[str]] = None) -> str:
    ident = f' id="{_e(table_id)}"' if table_id else ""
    out = [f"<table{ident}><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for i, cells in enumerate(rows):
        attrs = row_attrs[i] if row_attrs else ""
        tds = []
        for h, c in zip(header, cells):
            cls = "num" if h in NUMERIC else ""
            if h == "ours" and str(c).startswith("not resolvable"):
                cls = "nr"
            tds.append(f'<td class="{cls}">{_e(c)}</td>' if cls else f"<td>{_e(c)}</td>")
        out.append(f"<tr{attrs}>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _missing_html(lines: Sequence[str]) -> str:
    return "".join(f'<p class="missing">{_e(line)}</p>\n' for line in lines)


def _picture_html(p: Picture, caption: str) -> str:
    return (f'<figure><img src="{p.data_uri()}" alt="{_e(p.title)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _chart_html(c: Chart) -> str:
    return (f'<figure id="{_e(c.slug)}">{svg_chart(c)}<figcaption>' + "<br>".join(_e(t) for t in _curve_text(c))
            + "</figcaption></figure>")


def render_html(rows: list[dict[str, Any]], metrics: dict[str, dict[str, Any]], extras: Extras) -> str:
    """index.html: the table of results.md and every section, in one file that needs nothing else."""
    o: list[str] = ['<!DOCTYPE html>', '<html lang="en">', "<head>", '<meta charset="utf-8">',
                    '<meta name="viewport" content="width=device-width, initial-scale=1">',
                    "<title>Results beside the ArcFace paper</title>", f"<style>\n{CSS}\n</style>", "</head>",
                    "<body>", "<main>", "<h1>Results beside the ArcFace paper</h1>",
                    "<nav>" + "".join(f'<a href="#{k}">{_e(t)}</a>' for k, t in SECTIONS) + "</nav>",
                    '<section id="benchmarks">', f"<h2>{_e(SECTIONS[0][1])}</h2>",
                    "<p>" + intro(code=lambda s: f"<code>{_e(s)}</code>", escape=_e) + "</p>"]
    if models_text(rows):
        o.append(f"<p>{_e(models_text(rows))}</p>")
    if has_pixels_model(metrics):
        o.append(f'<p class="warning">{_e(PIXELS_WARNING)}</p>')
    attrs = [f' data-benchmark="{_e(r["benchmark"])}" data-metric="{_e(r["metric"])}"' for r in rows]
    o.append(_table(TABLE_HEADER, [table_cells(r) for r in rows], "results", attrs))
    base = baseline_rows(metrics)
    if base:
        o += ["<h3>Baselines</h3>", f"<p>{_e(BASELINES_INTRO)}</p>",
              _table(BASELINE_HEADER, [baseline_cells(r) for r in base], "baselines")]
    data = data_table(metrics)
    if data:
        o += ["<h3>Data</h3>", _table(DATA_HEADER, data, "data")]
    o += [f"<p>{_e(CLOSING)}</p>", "</section>"]

    o += ['<section id="roc">', f"<h2>{_e(SECTIONS[1][1])}</h2>"]
    o += [_chart_html(c) for c in extras.roc]
    o += [_missing_html(extras.missing.get("roc", [])), "</section>"]

    o += ['<section id="training">', f"<h2>{_e(SECTIONS[2][1])}</h2>", '<div class="grid">']
    o += [_chart_html(c) for c in extras.training]
    o += ["</div>", _missing_html(extras.missing.get("training", [])), "</section>"]

    o += ['<section id="alignment">', f"<h2>{_e(SECTIONS[3][1])}</h2>"]
    if extras.sheets:
        o.append("<p>Aligned crops with their landmarks (green) over the template (red), and a few rejects "
                 "with their reasons.</p>")
    o += [_picture_html(p, f"{p.title}: {p.path} ({len(p.data):,} bytes)") for p in extras.sheets]
    o += [_missing_html(extras.missing.get("alignment", [])), "</section>"]

    o += ['<section id="cleaning">', f"<h2>{_e(SECTIONS[4][1])}</h2>"]
    if extras.cleaning is not None:
        totals, rules, quality = _cleaning_tables(extras.cleaning)
        o.append(f"<p>From {_e(extras.cleaning_source)}: " + _e(", ".join(f"{k} {v}" for k, v in totals)) + ".</p>")
        if rules:
            o.append(_table(RULES_HEADER, rules, "cleaning-rules"))
        if quality:
            o += ["<p>Against the sample's known noise:</p>", _table(QUALITY_HEADER, quality, "cleaning-quality")]
    o.append('<div class="grid">' + "".join(_picture_html(p, f"{p.title}: {p.path}") for p in extras.cleaning_pictures)
             + "</div>")
    o += [_missing_html(extras.missing.get("cleaning", [])), "</section>"]

    o += ['<section id="run">', f"<h2>{_e(SECTIONS[5][1])}</h2>"]
    run = extras.run
    if run is not None:
        code = run.code
        facts = [("code", f"{code['describe']} (commit {code['commit']})"
                  + (f"; changed since: {', '.join(code['changes'])}" if code["changes"] else "")),
                 *run.machine, ("params", ", ".join(run.params_files) or "(defaults)")]
        o.append(_table(("what", "value"), facts, "machine"))
        if run.checksums:
            o += [f"<p>Data checksums, as {_e(run.lock_file)} records each stage's outputs:</p>",
                  _table(CHECKSUM_HEADER, [_checksum_cells(c) for c in run.checksums], "checksums")]
        o.append(_missing_html(extras.missing.get("run", [])))
        o += ["<details><summary>The resolved params</summary>",
              f"<pre><code>{_e(run.params_yaml)}</code></pre></details>"]
    o += ["</section>", "</main>", "</body>", "</html>"]
    return "\n".join(o) + "\n"
