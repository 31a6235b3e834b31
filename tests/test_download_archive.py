"""Archive extraction: good zip and tar.gz archives come out whole (links inside kept); hostile
ones (zip-slip, '..' and absolute names, symlinks and hardlinks out, link chains that resolve
out, writes through a symlink, device files, fifos) are refused with one line naming the archive
and the member, with nothing written outside the target, no target and no temporary folder left."""
from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from arcpipe.download.archive import archive_kind, archive_stem, extract_archive
from arcpipe.errors import PipelineError


def tree(root: Path) -> dict[str, str]:
    """Every path under root (links not followed) with what it is: a snapshot to compare."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            st = p.lstat()
            kind = "link:" + os.readlink(p) if p.is_symlink() else "dir" if p.is_dir() else \
                f"file:{p.read_bytes()!r}:{st.st_nlink}"
            out[p.relative_to(root).as_posix()] = kind
    return out


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """tmp_path/work holds the archive and the target; tmp_path/outside.txt is what an escape hits."""
    (tmp_path / "outside.txt").write_text("untouched")
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def add(tf: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 1_600_000_000
    for k, v in attrs.items():
        setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)


def make_tar(path: Path, members: list[tuple]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith((".gz", ".tgz")) else "w") as tf:
        for name, data, attrs in members:
            add(tf, name, data, **attrs)
    return path


def make_zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name, (2020, 1, 2, 3, 4, 6))
            if mode:
                info.create_system = 3
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def refused(archive: Path, target: Path, member: str) -> str:
    """Extraction must fail naming archive and member, changing nothing around the target."""
    root = archive.parent.parent
    before = tree(root)
    with pytest.raises(PipelineError) as e:
        extract_archive(archive, target)
    msg = str(e.value)
    assert "\n" not in msg and str(archive) in msg and repr(member) in msg, msg
    assert tree(root) == before  # nothing outside, no target, no temporary folder
    return msg


def test_names_say_which_archives():
    assert [archive_kind(n) for n in ("a.zip", "a.TAR", "a.tar.gz", "a.tgz", "a.tar.xz", "a.gz", "a.bin")] == \
        ["zip", "tar", "tar", "tar", "tar", None, None]
    assert archive_stem("lfw.tar.gz") == "lfw" and archive_stem("faces_emore.zip") == "faces_emore"


def test_good_zip_extracts_whole(work: Path):
    z = make_zip(work / "good.zip", [("top/", b"", 0), ("top/a.txt", b"alpha", 0),
                                      ("top/sub/b.bin", b"\x00" * 3000, 0o100755), ("c.txt", b"gamma", 0)])
    counts = extract_archive(z, work / "good")
    got = work / "good"
    assert (got / "top/a.txt").read_bytes() == b"alpha"
    assert (got / "top/sub/b.bin").read_bytes() == b"\x00" * 3000
    assert os.stat(got / "top/sub/b.bin").st_mode & 0o100 and (got / "c.txt").read_text() == "gamma"
    assert counts == {"files": 3, "dirs": 1, "symlinks": 0, "hardlinks": 0, "bytes": 3010}
    assert sorted(os.listdir(work)) == ["good", "good.zip"]


def test_good_tar_gz_extracts_whole_with_links_inside(work: Path):
    t = make_tar(work / "good.tar.gz", [
        ("./", b"", {"type": tarfile.DIRTYPE}),
        ("./data/x.txt", b"x" * 10, {}),
        ("./data/deep/y.txt", b"y", {}),
        ("./data/link", b"", {"type": tarfile.SYMTYPE, "linkname": "deep/y.txt"}),
        ("./data/hard", b"", {"type": tarfile.LNKTYPE, "linkname": "data/x.txt"}),
    ])
    counts = extract_archive(t, work / "good")
    got = work / "good" / "data"
    assert (got / "x.txt").read_bytes() == b"x" * 10 and (got / "link").read_text() == "y"
    assert os.readlink(got / "link") == "deep/y.txt" and os.stat(got / "hard").st_ino == os.stat(got / "x.txt").st_ino
    assert os.stat(got / "x.txt").st_mtime == 1_600_000_000
    assert counts == {"files": 2, "dirs": 0, "symlinks": 1, "hardlinks": 1, "bytes": 11}
    assert sorted(os.listdir(work)) == ["good", "good.tar.gz"]


def test_extracting_again_replaces_the_old_folder(work: Path):
    extract_archive(make_zip(work / "a.zip", [("old.txt", b"1", 0)]), work / "a")
    extract_archive(make_zip(work / "a.zip", [("new.txt", b"2", 0)]), work / "a")
    assert os.listdir(work / "a") == ["new.txt"] and sorted(os.listdir(work)) == ["a", "a.zip"]


def test_zip_slip_is_refused(work: Path):
    z = make_zip(work / "slip.zip", [("ok.txt", b"fine", 0), ("../outside.txt", b"pwned", 0)])
    assert "'..'" in refused(z, work / "slip", "../outside.txt")


def test_zip_backslash_slip_and_absolute_are_refused(work: Path):
    refused(make_zip(work / "bs.zip", [("..\\..\\outside.txt", b"pwned", 0)]), work / "bs", "..\\..\\outside.txt")
    abs_target = str(work.parent / "abs.txt")
    assert "absolute" in refused(make_zip(work / "abs.zip", [(abs_target, b"pwned", 0)]), work / "abs", abs_target)


def test_zip_symlink_out_and_fifo_are_refused(work: Path):
    z = make_zip(work / "ln.zip", [("link", b"../outside.txt", stat.S_IFLNK | 0o777)])
    assert "symlink" in refused(z, work / "ln", "link")
    z = make_zip(work / "fifo.zip", [("pipe", b"", stat.S_IFIFO | 0o644)])
    assert "fifo" in refused(z, work / "fifo", "pipe")


@pytest.mark.parametrize("name", ["../outside.txt", "a/../../outside.txt", "/tmp/arcpipe-abs-test.txt"])
def test_tar_escaping_names_are_refused(work: Path, name: str):
    t = make_tar(work / "bad.tar", [("fine.txt", b"ok", {}), (name, b"pwned", {})])
    refused(t, work / "bad", name)
    assert not Path("/tmp/arcpipe-abs-test.txt").exists()


@pytest.mark.parametrize("link", ["../outside.txt", "/etc/passwd", "sub/../../outside.txt"])
def test_tar_symlink_out_is_refused(work: Path, link: str):
    t = make_tar(work / "sym.tgz", [("evil", b"", {"type": tarfile.SYMTYPE, "linkname": link}),
                                    ("evil", b"pwned", {})])
    assert "symlink" in refused(t, work / "sym", "evil")
    assert (work.parent / "outside.txt").read_text() == "untouched"


def test_tar_symlink_chain_that_resolves_out_is_refused(work: Path):
    # each link looks harmless on its own; together s/a -> ../b/.. -> (b = .) -> ../
    t = make_tar(work / "chain.tar", [
        ("s/a", b"", {"type": tarfile.SYMTYPE, "linkname": "../b/.."}),
        ("b", b"", {"type": tarfile.SYMTYPE, "linkname": "."}),
    ])
    assert "resolves to" in refused(t, work / "chain", "s/a")


def test_tar_write_through_a_symlink_is_refused(work: Path):
    t = make_tar(work / "through.tar", [
        ("sub/", b"", {"type": tarfile.DIRTYPE}),
        ("d", b"", {"type": tarfile.SYMTYPE, "linkname": "sub"}),
        ("d/x.txt", b"via link", {}),
    ])
    assert "through a symlink" in refused(t, work / "through", "d/x.txt")


@pytest.mark.parametrize("link", ["../outside.txt", "/etc/passwd", "missing.txt"])
def test_tar_hardlink_out_is_refused(work: Path, link: str):
    t = make_tar(work / "hard.tar", [("h", b"", {"type": tarfile.LNKTYPE, "linkname": link})])
    assert "hardlink" in refused(t, work / "hard", "h")
    assert os.stat(work.parent / "outside.txt").st_nlink == 1


@pytest.mark.parametrize("kind,word", [(tarfile.CHRTYPE, "character device"), (tarfile.BLKTYPE, "block device"),
                                       (tarfile.FIFOTYPE, "fifo")])
def test_tar_device_files_and_fifos_are_refused(work: Path, kind: bytes, word: str):
    dev = {"type": kind, "devmajor": 1, "devminor": 3}
    t = make_tar(work / "dev.tar", [("ok.txt", b"ok", {}), ("dev/null", b"", dev)])
    assert word in refused(t, work / "dev", "dev/null")


def test_a_refused_archive_leaves_an_earlier_extraction_as_it_was(work: Path):
    extract_archive(make_zip(work / "x.zip", [("keep.txt", b"1", 0)]), work / "x")
    before = tree(work.parent)
    with pytest.raises(PipelineError):
        extract_archive(make_zip(work / "y.zip", [("ok", b"", 0), ("../outside.txt", b"", 0)]), work / "x")
    after = tree(work.parent)
    assert after.pop("work/y.zip") and {k: v for k, v in before.items()} == after


def test_a_corrupt_archive_is_one_line_naming_it(work: Path):
    bad = work / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    with pytest.raises(PipelineError, match=r"bad\.tar\.gz: cannot extract") as e:
        extract_archive(bad, work / "bad")
    assert "\n" not in str(e.value) and sorted(os.listdir(work)) == ["bad.tar.gz"]
