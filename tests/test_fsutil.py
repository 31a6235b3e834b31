"""The atomic writes every stage's outputs go through: all of it or none of it."""
from __future__ import annotations

import pytest

from arcpipe.fsutil import atomic_files_into, atomic_path


def _siblings(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_replaces_a_file_or_a_folder_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "one" and _siblings(target.parent) == ["out.txt"]

    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "old").write_text("x")
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("y")
    assert _siblings(folder) == ["new"] and _siblings(tmp_path) == ["dir", "sub"]


def test_atomic_files_into_keeps_the_other_files_and_touches_nothing_on_error(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep").write_text("k")
    (folder / "same").write_text("old")
    with atomic_files_into(folder) as tmp:
        tmp.mkdir()  # the caller makes the folder, as with atomic_path
        (tmp / "same").write_text("new")
        (tmp / "added").write_text("a")
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"keep": "k", "same": "new", "added": "a"}
    with pytest.raises(KeyboardInterrupt):
        with atomic_files_into(folder) as tmp:
            tmp.mkdir()
            (tmp / "same").write_text("half")
            raise KeyboardInterrupt
    assert (folder / "same").read_text() == "new" and _siblings(tmp_path) == ["out"]
