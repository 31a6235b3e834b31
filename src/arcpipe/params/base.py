"""Shared pieces of the params schema: a strict base model and small field types."""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class Section(BaseModel):
    """A params section: unknown keys and silent type coercion ("5" -> 5) are both errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
UnitFloat = Annotated[float, Field(ge=0, le=1)]

# a name that becomes a file or folder name (a data set, an evaluation set): no separators, no dot first
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def _device(v: str) -> str:
    if not _DEVICE.fullmatch(v):
        raise ValueError(f"{v!r}: expected cpu, cuda or cuda:N")
    return v


# where a stage runs its model: cpu, cuda or cuda:N
Device = Annotated[str, AfterValidator(_device)]
