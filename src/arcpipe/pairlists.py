"""The verification protocols of the raw releases: which image pairs, same or not, in which fold.

    pairs = read_pairs("cfp_fp", "/datasets/cfp-dataset/Protocol")

Each reader returns Pairs whose image names are paths relative to the set's images, as many
components deep as the release names them: the evalpack stage matches them against the aligned
set's manifest by that many trailing path components.

- lfw: LFW's pairs.txt, "<folds>\\t<n>" then per fold n matched ("name n1 n2") and n mismatched
  ("name1 n1 name2 n2") lines; images "<Name>/<Name>_<NNNN>.jpg".
- cfp_fp, cfp_ff: CFP's Protocol folder: Pair_list_F.txt and Pair_list_P.txt ("<index> <path>",
  path ending in Images/<id>/{frontal,profile}/<nn>.jpg) and Split/{FP,FF}/<fold>/{same,diff}.txt
  ("<i>,<j>": FP pairs frontal i with profile j, FF frontal i with frontal j); images
  "<id>/<pose>/<nn>.jpg"; one fold per Split subfolder, its same pairs then its diff pairs.
- calfw, cplfw: pairs_CALFW.txt / pairs_CPLFW.txt, no header, two consecutive "<file> <label>"
  lines per pair with the same label on both, 0 for a mismatched pair; images "<file>" (the
  releases' flat image folders); folds: the file in `folds` contiguous equal parts, the order of
  the released packs.
- list: one pair a line, "<image1> <image2> <same> [<fold>]" (whitespace or commas; same is 1/0
  or true/false; '#' starts a comment): for a set whose release has no pairs file of its own
  (AgeDB-30: its authors hand out the 30-year-gap pairs), or any pairs a user defines. Without a
  fold column, `folds` contiguous parts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .evalpack import EvalPackError

__all__ = ["PROTOCOLS", "Pair", "lfw_image", "read_pairs", "read_lfw_pairs", "read_cfp_pairs",
           "read_two_line_pairs", "read_pair_list"]

PROTOCOLS = ("lfw", "cfp_fp", "cfp_ff", "calfw", "cplfw", "list")


@dataclass(frozen=True)
class Pair:
    image1: str  # relative image path, e.g. "<Name>/<Name>_<NNNN>.jpg"
    image2: str
    same: bool
    line: int    # line in `file` (1-based)
    fold: int
    file: str = ""  # the protocol file the pair is on, where a protocol has several (CFP)


def lfw_image(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"


def read_pairs(protocol: str, path: str | Path, folds: int = 10) -> list[Pair]:
    """The pairs of one evaluation set; `folds` splits the protocols whose files give none."""
    path = Path(path)
    if protocol == "lfw":
        return read_lfw_pairs(path)
    if protocol in ("cfp_fp", "cfp_ff"):
        return read_cfp_pairs(path, protocol[-2:].upper())
    if protocol in ("calfw", "cplfw"):
        return read_two_line_pairs(path, folds)
    if protocol == "list":
        return read_pair_list(path, folds)
    raise EvalPackError(f"{path}: unknown pairs protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")


def _lines(path: Path, what: str = "pairs file") -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvalPackError(f"{path}: {what} does not exist") from None
    except IsADirectoryError:
        raise EvalPackError(f"{path}: {what} is a folder, expected a text file") from None
    except UnicodeDecodeError:
        raise EvalPackError(f"{path}: {what} is not UTF-8 text") from None


def _contiguous_fold(i: int, n: int, folds: int) -> int:
    return i * folds // n


def read_lfw_pairs(path: str | Path) -> list[Pair]:
    """LFW pairs.txt: "<folds>\\t<n>", then per fold n matched and n mismatched lines."""
    path = Path(path)
    lines = _lines(path)
    if not lines:
        raise EvalPackError(f"{path}: line 1: empty pairs file")
    head = lines[0].split()
    try:
        folds, n = (int(head[0]), int(head[1])) if len(head) == 2 else (1, int(head[0]))
    except (ValueError, IndexError):
        raise EvalPackError(f"{path}: line 1: expected '<folds>\\t<pairs per half-fold>', got {lines[0][:60]!r}") from None
    body = [(i + 2, ln) for i, ln in enumerate(lines[1:]) if ln.strip()]
    if len(body) != folds * 2 * n:
        raise EvalPackError(f"{path}: header says {folds} folds x {2 * n} pairs = {folds * 2 * n} lines, "
                            f"found {len(body)}")
    pairs = []
    for j, (lineno, ln) in enumerate(body):
        f = ln.split()
        fold = j // (2 * n)
        try:
            if len(f) == 3:
                pairs.append(Pair(lfw_image(f[0], int(f[1])), lfw_image(f[0], int(f[2])), True, lineno, fold))
            elif len(f) == 4:
                pairs.append(Pair(lfw_image(f[0], int(f[1])), lfw_image(f[2], int(f[3])), False, lineno, fold))
            else:
                raise ValueError
        except ValueError:
            raise EvalPackError(f"{path}: line {lineno}: expected 'name n1 n2' or 'name1 n1 name2 n2', "
                                f"got {ln[:60]!r}") from None
    return pairs


# --------------------------------------------------------------------------- CFP


def _cfp_image(path: Path, lineno: int, raw: str) -> str:
    """'../Data/Images/001/frontal/01.jpg' -> '001/frontal/01.jpg' (the part below Images/)."""
    parts = [p for p in PurePosixPath(raw.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    if "Images" in parts:
        parts = parts[len(parts) - parts[::-1].index("Images"):]
    if len(parts) < 3:
        raise EvalPackError(f"{path}: line {lineno}: expected a path ending in <id>/<pose>/<image>, got {raw[:60]!r}")
    return "/".join(parts[-3:])


def _cfp_index(path: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    for lineno, ln in enumerate(_lines(path, "CFP pair list"), 1):
        if not ln.strip():
            continue
        f = ln.split()
        if len(f) != 2 or not f[0].isdigit():
            raise EvalPackError(f"{path}: line {lineno}: expected '<index> <image path>', got {ln[:60]!r}")
        i = int(f[0])
        if i in out:
            raise EvalPackError(f"{path}: line {lineno}: index {i} is listed twice")
        out[i] = _cfp_image(path, lineno, f[1])
    if not out:
        raise EvalPackError(f"{path}: CFP pair list is empty")
    return out


def read_cfp_pairs(protocol_dir: str | Path, split: str) -> list[Pair]:
    """CFP-FP (split 'FP') or CFP-FF ('FF') from the release's Protocol folder."""
    root = Path(protocol_dir)
    if not root.is_dir():
        raise EvalPackError(f"{root}: CFP protocol folder does not exist (expected the release's Protocol/ "
                            "with Pair_list_F.txt, Pair_list_P.txt and Split/)")
    frontal = _cfp_index(root / "Pair_list_F.txt")
    second = _cfp_index(root / "Pair_list_P.txt") if split == "FP" else frontal
    split_dir = root / "Split" / split
    fold_dirs = sorted((d for d in split_dir.iterdir() if d.is_dir()), key=lambda d: (len(d.name), d.name)) \
        if split_dir.is_dir() else []
    if not fold_dirs:
        raise EvalPackError(f"{split_dir}: no fold folders (expected 01 ... 10, each with same.txt and diff.txt)")
    pairs = []
    for fold, d in enumerate(fold_dirs):
        for kind, same in (("same.txt", True), ("diff.txt", False)):
            f = d / kind
            rel = f.relative_to(root).as_posix()
            for lineno, ln in enumerate(_lines(f, "CFP split file"), 1):
                if not ln.strip():
                    continue
                m = re.fullmatch(r"\s*(\d+)\s*[, ]\s*(\d+)\s*", ln)
                if not m:
                    raise EvalPackError(f"{f}: line {lineno}: expected '<i>,<j>', got {ln[:60]!r}")
                i, j = int(m.group(1)), int(m.group(2))
                if i not in frontal:
                    raise EvalPackError(f"{f}: line {lineno}: index {i} is not in Pair_list_F.txt")
                if j not in second:
                    listed = "Pair_list_P.txt" if split == "FP" else "Pair_list_F.txt"
                    raise EvalPackError(f"{f}: line {lineno}: index {j} is not in {listed}")
                pairs.append(Pair(frontal[i], second[j], same, lineno, fold, rel))
    return pairs


# --------------------------------------------------------------------------- CALFW, CPLFW, lists


def _image_field(path: Path, lineno: int, raw: str) -> str:
    name = raw.replace("\\", "/").strip("/")
    if not name or ".." in name.split("/"):
        raise EvalPackError(f"{path}: line {lineno}: {raw[:60]!r} is not a relative image path")
    return name


def read_two_line_pairs(path: str | Path, folds: int = 10) -> list[Pair]:
    """CALFW / CPLFW: two "<file> <label>" lines per pair, the same label on both (0: mismatched)."""
    path = Path(path)
    body = [(i + 1, ln) for i, ln in enumerate(_lines(path)) if ln.strip()]
    if not body:
        raise EvalPackError(f"{path}: empty pairs file")
    if len(body) % 2:
        raise EvalPackError(f"{path}: {len(body)} lines: expected two lines per pair (an even count)")
    rows = []
    for lineno, ln in body:
        f = ln.split()
        if len(f) != 2 or not re.fullmatch(r"-?\d+", f[1]):
            raise EvalPackError(f"{path}: line {lineno}: expected '<image file> <label>', got {ln[:60]!r}")
        rows.append((lineno, _image_field(path, lineno, f[0]), int(f[1])))
    n = len(rows) // 2
    pairs = []
    for k in range(n):
        (l1, a, la), (l2, b, lb) = rows[2 * k], rows[2 * k + 1]
        if la != lb:
            raise EvalPackError(f"{path}: line {l2}: label {lb} differs from line {l1}'s {la}; a pair's two "
                                "lines carry one label")
        pairs.append(Pair(a, b, la != 0, l1, _contiguous_fold(k, n, folds)))
    return pairs


_TRUE, _FALSE = {"1", "true", "yes", "same"}, {"0", "false", "no", "diff"}


def read_pair_list(path: str | Path, folds: int = 10) -> list[Pair]:
    """"<image1> <image2> <same> [<fold>]" a line; the fold numbers the file uses, in order, become 0, 1, ..."""
    path = Path(path)
    rows = []
    for lineno, ln in enumerate(_lines(path), 1):
        text = ln.split("#", 1)[0].strip()
        if not text:
            continue
        f = [x for x in re.split(r"[\s,]+", text) if x]
        if len(f) not in (3, 4) or f[2].lower() not in _TRUE | _FALSE or (len(f) == 4 and not f[3].isdigit()):
            raise EvalPackError(f"{path}: line {lineno}: expected '<image1> <image2> <1|0> [<fold>]', "
                                f"got {ln[:60]!r}")
        rows.append((lineno, _image_field(path, lineno, f[0]), _image_field(path, lineno, f[1]),
                     f[2].lower() in _TRUE, int(f[3]) if len(f) == 4 else None))
    if not rows:
        raise EvalPackError(f"{path}: empty pairs file")
    given = [r[4] for r in rows]
    if any(g is None for g in given) and any(g is not None for g in given):
        raise EvalPackError(f"{path}: some lines give a fold and some do not; give it on every line or on none")
    if given[0] is None:
        n = len(rows)
        return [Pair(a, b, s, ln, _contiguous_fold(k, n, folds)) for k, (ln, a, b, s, _) in enumerate(rows)]
    index = {g: i for i, g in enumerate(sorted(set(given)))}  # folds 1, 2, ... (or 0, 1, ...) -> 0, 1, ...
    return [Pair(a, b, s, ln, index[g]) for ln, a, b, s, g in rows]
