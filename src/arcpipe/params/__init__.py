"""The schema of params.yaml, validated up front, with one-line errors that name the key.

`load_params(["params.yaml", "params/variant.yaml"])` deep-merges the files in order (a variant
holds only what it changes) and validates the whole result. Every stage calls it before it
writes anything.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import ValidationError

from ..errors import ParamsError
from .schema import Params

__all__ = ["Params", "load_params", "load_yaml", "deep_merge", "flatten", "ParamsError"]


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ParamsError(f"{path}:{where}: not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """Merge `over` onto `base`: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay whole."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _origins(files: list[tuple[str, dict]]) -> dict[str, str]:
    origin: dict[str, str] = {}
    for name, data in files:
        for key in flatten(data):
            origin[key] = name
    return origin


def _origin_of(loc: str, origin: Mapping[str, str], default: str) -> str:
    best = default
    for key, name in origin.items():
        if key == loc or key.startswith(loc + ".") or loc.startswith(key + "."):
            best = name
            if key == loc:
                break
    return best


_TYPE_WORDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "int_from_float": "an integer",
}


def _describe(err: Mapping[str, Any]) -> str:
    typ = err.get("type", "")
    got = err.get("input")
    got_s = f"{type(got).__name__} {got!r}" if not isinstance(got, (dict, list)) else type(got).__name__
    if len(got_s) > 60:
        got_s = got_s[:57] + "..."
    if typ == "extra_forbidden":
        return "unknown key"
    if typ == "missing":
        return "required key is missing"
    if typ in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[typ]}, got {got_s}"
    if typ in ("literal_error", "enum"):
        exp = err.get("ctx", {}).get("expected", "")
        return f"expected one of {exp}, got {got_s}"
    if typ.startswith(("greater_than", "less_than")) or typ in ("too_short", "too_long"):
        return f"{err.get('msg', typ).lower()}, got {got_s}"
    msg = err.get("msg", typ)
    msg = msg.removeprefix("Value error, ")
    return msg if isinstance(got, (dict, list)) else f"{msg} (got {got_s})"


def _format_error(exc: ValidationError, origin: Mapping[str, str], default: str, known: Mapping) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    text = _describe(first)
    if not loc:
        text = str(first.get("msg", "")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        parent = _lookup(known, [str(p) for p in first["loc"][:-1]])
        if isinstance(parent, Mapping):
            text += f" (expected one of: {', '.join(sorted(parent))})"
    if not loc:  # a cross-section check: its message starts with the key it names
        return f"{default}: {text}"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{_origin_of(loc, origin, default)}: {loc}: {text}{more}"


def _lookup(d: Any, parts: list[str]) -> Any:
    for p in parts:
        if isinstance(d, Mapping) and p in d:
            d = d[p]
        else:
            return None
    return d


def validate(data: Mapping, origin: Mapping[str, str] | None = None, default: str = "params") -> Params:
    try:
        return Params.model_validate(dict(data))
    except ValidationError as e:
        known = Params.model_json_schema_keys()
        raise ParamsError(_format_error(e, origin or {}, default, known)) from None


def load_params(paths: Iterable[str | os.PathLike] = ("params.yaml",)) -> Params:
    """Load, merge in order, validate. Raises ParamsError with one line on any problem."""
    files: list[tuple[str, dict]] = []
    merged: dict = {}
    for p in paths:
        data = load_yaml(p)
        files.append((str(p), data))
        merged = deep_merge(merged, data)
    if not files:
        raise ParamsError("no params file given")
    return validate(merged, _origins(files), files[0][0])


def origin_of(key: str, paths: Iterable[str | os.PathLike]) -> str:
    """The params file (of several merged in order) that set `key` last."""
    paths = [str(p) for p in paths]
    files = [(p, load_yaml(p)) for p in paths]
    return _origin_of(key, _origins(files), paths[0] if paths else "params")
