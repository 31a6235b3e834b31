"""Fetching the data sets: resumable, checksummed downloads and safe archive extraction.

    from arcpipe.download import download_all
    result = download_all(params.download, log)   # every set in place under out_dir, manifest.json

    fetch.py     one URL into place: http(s) with Range resume, file:/local paths, fsspec protocols
    archive.py   zip and tar extraction that refuses members escaping the target
    sets.py      the params' data sets: skip what is in place, take files placed by hand, manifest
"""
from .archive import archive_kind, archive_stem, extract_archive
from .fetch import ChecksumError, Source, fetch_file, resolve_source, verify
from .sets import download_all, extract_dir, file_name

__all__ = ["download_all", "file_name", "extract_dir", "fetch_file", "resolve_source", "verify", "Source",
           "ChecksumError", "extract_archive", "archive_kind", "archive_stem"]
