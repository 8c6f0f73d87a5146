"""What every collector yields: raw bytes, the name to land them under, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fetched:
    name: str
    data: bytes
    #: where the bytes came from (a file path or URL without credentials)
    origin: str


def template_values(month: str, params: dict[str, str] | None = None) -> dict[str, str]:
    """The fields a collector's templates may use for ``month`` (see ``MONTH_FIELDS`` in the specs), plus
    ``params``."""
    year, mm = month.split("-")
    after = f"{int(year) + 1:04d}-01" if mm == "12" else f"{year}-{int(mm) + 1:02d}"
    return {**(params or {}), "month": month, "year": year, "mm": mm, "start": f"{month}-01", "end": f"{after}-01"}
