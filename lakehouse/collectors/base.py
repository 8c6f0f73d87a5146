"""What every collector yields: raw bytes, the name to land them under, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fetched:
    name: str
    data: bytes
    #: where the bytes came from (a file path or URL without credentials)
    origin: str
