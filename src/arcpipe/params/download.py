"""params.yaml `download`: the data sets to fetch (or to place by hand), each with its checksum.

    download:
      out_dir: data/download
      datasets:
        lfw:                                   # -> data/download/lfw/lfw.tgz and lfw/lfw/ extracted
          url: https://example.org/lfw.tgz
          sha256: 0123...ef                    # 64 hex digits
          size: 180566744                      # optional, checked when given
        ms1mv2:                                # no public URL: the user places the file
          url: null
          manual: "the insightface dataset zoo (faces_emore)"
          path: downloads/faces_emore.zip      # where the user puts it (relative to the working directory)
          sha256: 4567...89

A url is http(s), file: (file:rel/path, file:///abs/path), a plain local path,
package://<package>/<path> (a file inside an installed Python package: the embedded sample's
photos, params.yaml's photo_* sets), or any protocol fsspec has a plugin for (s3://, gs://, ...).
Each set is one stage of the DAG, download@NAME, whose output is <out_dir>/NAME/.
"""
from __future__ import annotations

import re
from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from .base import NAME, NonNegInt, PositiveFloat, Section

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class DownloadItem(Section):
    # where to fetch it from; null: no public URL, the user places the file (see manual, path)
    url: Optional[str] = None
    sha256: str
    size: Optional[NonNegInt] = None
    # unpack a zip/tar archive into <out_dir>/<name>/<stem>/; "auto": when the name says archive
    extract: Union[bool, Literal["auto"]] = "auto"
    # the file name under <out_dir>/<name>/ (default: the last part of the url or of path)
    dest: Optional[str] = None
    # url null: where to get the file (a web page, a contact), shown when it is missing
    manual: Optional[str] = None
    # url null: the file the user places, relative to the working directory or absolute
    path: Optional[str] = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256.fullmatch(v):
            raise ValueError(f"expected 64 hex digits, got {v!r}")
        return v.lower()

    @field_validator("dest")
    @classmethod
    def _plain_name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (v in ("", ".", "..") or "/" in v or "\\" in v):
            raise ValueError(f"expected a plain file name (no folders), got {v!r}")
        return v

    @model_validator(mode="after")
    def _source(self) -> "DownloadItem":
        if self.url is not None and (self.manual is not None or self.path is not None):
            raise ValueError("give either url, or manual and path (a file placed by hand), not both")
        if self.url is None and (self.manual is None or self.path is None):
            raise ValueError("url is null: give manual (where to get the file) and path (where the user puts it)")
        return self


class DownloadParams(Section):
    out_dir: str = "data/download"
    # attempts after the first, per file, waiting backoff_s, 2*backoff_s, 4*backoff_s, ... between them
    retries: NonNegInt = 4
    backoff_s: float = Field(default=1.0, ge=0)
    # seconds a connection may stay silent before the attempt counts as failed
    timeout_s: PositiveFloat = 30.0
    datasets: dict[str, DownloadItem] = Field(default_factory=dict)

    @field_validator("datasets")
    @classmethod
    def _folder_names(cls, v: dict[str, DownloadItem]) -> dict[str, DownloadItem]:
        for name in v:
            if not NAME.fullmatch(name):
                raise ValueError(f"data set name {name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
        return v
