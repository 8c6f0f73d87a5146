"""Library: data computed by a Python package shipped with the lakehouse, landed as CSV text.

``holidays_calendar`` — one line per day of the month from the ``holidays`` package (offline)::

    date,weekday,is_weekend,is_holiday,holiday_name,is_working_day
    2012-01-02,1,false,true,New Year's Day (observed),false

``weekday`` is the ISO weekday (1 = Monday … 7 = Sunday). Options: ``country`` (ISO code, default ``US``),
``subdiv`` (state/province, optional), ``weekend`` (ISO weekdays, default ``[6, 7]``), ``observed``
(include observed-on-another-day holidays, default true). Several holidays on one day are joined by ``; ``.
"""

from __future__ import annotations

import calendar
import csv
import io
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

from lakehouse.collectors.base import Fetched, template_values
from lakehouse.collectors.landing import CollectorError
from lakehouse.specs.models import LibraryCollector

_CALENDAR_OPTIONS = {"country", "subdiv", "weekend", "observed"}


def holidays_calendar(month: str, options: dict[str, Any]) -> tuple[bytes, str]:
    """The month's calendar as CSV bytes, and the origin (package version and options)."""
    import holidays

    unknown = sorted(set(options) - _CALENDAR_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for holidays_calendar; known: {sorted(_CALENDAR_OPTIONS)}")
    country = str(options.get("country", "US"))
    subdiv = options.get("subdiv")
    weekend = {int(d) for d in options.get("weekend", [6, 7])}
    if not weekend <= set(range(1, 8)):
        raise ValueError(f"weekend {sorted(weekend)} must list ISO weekdays 1..7")
    observed = bool(options.get("observed", True))
    year, mm = (int(p) for p in month.split("-"))
    try:
        table = holidays.country_holidays(country, subdiv=subdiv, years=year, observed=observed)
    except NotImplementedError as exc:
        raise ValueError(f"the holidays package does not know country {country!r}/subdiv {subdiv!r}: {exc}") from None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["date", "weekday", "is_weekend", "is_holiday", "holiday_name", "is_working_day"])
    for day in range(1, calendar.monthrange(year, mm)[1] + 1):
        d = date(year, mm, day)
        names = table.get_list(d)
        is_weekend = d.isoweekday() in weekend
        is_holiday = bool(names)
        writer.writerow(
            [
                d.isoformat(),
                d.isoweekday(),
                str(is_weekend).lower(),
                str(is_holiday).lower(),
                "; ".join(names),
                str(not (is_weekend or is_holiday)).lower(),
            ]
        )
    origin = f"library:holidays=={holidays.__version__}?country={country}" + (f"&subdiv={subdiv}" if subdiv else "")
    return buffer.getvalue().encode("utf-8"), origin


LIBRARIES: dict[str, Callable[[str, dict[str, Any]], tuple[bytes, str]]] = {
    "holidays_calendar": holidays_calendar,
}


def fetch(spec: LibraryCollector, month: str, *, source: str = "?") -> Iterator[Fetched]:
    where = f"source {source!r} month {month}"
    try:
        data, origin = LIBRARIES[spec.name](month, dict(spec.options))
    except (ValueError, KeyError, TypeError) as exc:
        raise CollectorError(f"{where}: library {spec.name!r} failed: {exc}") from None
    yield Fetched(name=spec.file_name.format(**template_values(month)), data=data, origin=origin)
