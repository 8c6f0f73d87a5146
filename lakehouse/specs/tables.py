"""Lake tables as configs name them: ``<zone>/<table>``."""

from __future__ import annotations

from typing import Annotated, NamedTuple

from pydantic import AfterValidator


class TableRef(NamedTuple):
    """A lake table named ``<zone>/<table>`` in a config (``trusted/meter_readings``)."""

    zone: str
    table: str

    @classmethod
    def of(cls, name: str) -> TableRef:
        zone, sep, table = name.partition("/")
        if not sep or not zone or not table or "/" in table:
            raise ValueError(f"table {name!r} must be '<zone>/<table>'")
        return cls(zone, table)

    def __str__(self) -> str:
        return f"{self.zone}/{self.table}"


def _table_name(value: str) -> str:
    TableRef.of(value)
    return value


#: a config's ``<zone>/<table>`` (checked at load; :meth:`TableRef.of` splits it)
TableName = Annotated[str, AfterValidator(_table_name)]
