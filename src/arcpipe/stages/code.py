"""The code a stage runs: its script, its stage module and everything they import from arcpipe,
found by reading the imports (function-level ones too), never by running anything.

dvc.yaml's deps of each stage must name exactly these files (tests/test_stage_code.py), and the
Snakefile lists them as inputs, so a change to the code a stage runs reruns that stage and only
the stages that run it, under either engine.

    stage_code("detect")          # ['scripts/detect.py', 'src/arcpipe/columns.py', 'src/arcpipe/detect', ...]
    stage_code_files("detect")    # every .py file, folders expanded
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = "arcpipe"
SRC = Path(__file__).resolve().parents[1]          # .../src/arcpipe
REPO = SRC.parents[1]                              # the checkout (src/arcpipe/...)


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for cand in (SRC.parent / rel.with_suffix(".py"), SRC.parent / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every arcpipe module named by an import statement anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    here = _module_name(path) if path.is_relative_to(SRC.parent) else ""
    pkg = here if is_pkg else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".") if pkg else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import submodule`
    out = set()
    for name in found:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                if _module_file(".".join(parts[:i])) is not None:
                    out.add(".".join(parts[:i]))
    return out


@lru_cache(maxsize=None)
def stage_code_files(stage: str) -> tuple[str, ...]:
    """Repo-relative paths of every Python file stage `stage` runs, sorted."""
    start = [REPO / "scripts" / f"{stage}.py", SRC / "stages" / f"{stage}.py"]
    seen: set[Path] = set()
    todo = [p for p in start if p.is_file()]
    if len(todo) != 2:
        raise ValueError(f"no stage {stage!r}: expected scripts/{stage}.py and src/arcpipe/stages/{stage}.py")
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        for mod in _imports(p):
            f = _module_file(mod)
            if f is not None and f not in seen:
                todo.append(f)
    return tuple(sorted(p.relative_to(REPO).as_posix() for p in seen))


def stage_code(stage: str) -> list[str]:
    """stage_code_files, with a package folder in place of its files when the stage runs all of them."""
    files = set(stage_code_files(stage))
    out: set[str] = set()
    for f in files:
        path = Path(f)
        best = f
        for parent in path.parents:
            if parent == Path("src") or parent == Path("."):
                break
            if not (REPO / parent / "__init__.py").is_file():
                break
            if all(p.relative_to(REPO).as_posix() in files for p in (REPO / parent).rglob("*.py")):
                best = parent.as_posix()
        out.add(best)
    return sorted(out)
