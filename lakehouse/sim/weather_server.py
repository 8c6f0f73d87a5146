"""A small weather provider of the demo world: real NOAA daily observations over HTTP, with faults on demand.

Serves the Seattle daily weather 2012-01..2015-12 bundled in ``vega_datasets`` (see
:func:`lakehouse.sim.world.seattle_weather`) per station and month::

    GET /stations/<station>/daily/<YYYY-MM>.csv     station,date,tmax_c,tmin_c,prcp_mm,wind_ms,weather
    GET /stations/<station>/daily.json?start=<YYYY-MM-DD>&end=<YYYY-MM-DD>
                                                    {"station", "units", "observations": [{"station",
                                                    "date", "temperature": {"max_c", "min_c"},
                                                    "precipitation_mm", "wind_ms", "weather"}]}, days
                                                    from start up to end (exclusive), any span
    GET /noaa/<station>/<YYYY-MM>.txt               the provider's legacy export: semicolon-separated,
                                                    vega's own column names (date;precipitation;...)
    GET /stations                                   the known stations, one per line
    GET /health                                     "ok"

Unknown stations and months without observations answer 404.

Faults, for tests and the reliability suite, either per request in the query string (counted per URL path
*and* query, so ``?fail=2`` fails the first two requests of that URL, then serves the data)::

    ?fail=N        the first N requests answer 500
    ?html=N        the first N requests answer 200 with an HTML maintenance page
    ?truncate=N    the first N requests announce the full Content-Length but send half the body
    ?delay=S       every request waits S seconds before answering (``&delay_n=N``: only the first N)

or for the next matching requests through the control endpoint (JSON body; ``match`` is a substring of the
request path and query, empty matches everything)::

    POST   /_faults   {"fail": 2, "html": 0, "truncate": 0, "delay_s": 0, "delay_n": 0, "match": "2012-01"}
    DELETE /_faults   clear every pending fault and reset the counters below
    GET    /_stats    {"requests": {"<path>": n, ...}, "faults_served": {...}}

Run it: ``python -m lakehouse.sim.weather_server --port 8765`` (``--port 0`` picks a free port and prints
the URL); ``... --port 8765 -- dagster dev ...`` runs a command while serving, with ``LAKEHOUSE_WEATHER_URL``
set for it (``make ui``). In Python: ``with WeatherServer() as server: server.url``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from lakehouse.sim.world import seattle_weather

#: the GHCN-Daily id of Seattle-Tacoma International Airport, where NOAA observes Seattle's weather
SEATTLE_STATION = "USW00024233"
STATIONS = {SEATTLE_STATION: "SEATTLE TACOMA AIRPORT, WA US"}
CSV_HEADER = "station,date,tmax_c,tmin_c,prcp_mm,wind_ms,weather"
HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Scheduled maintenance</title></head>"
    b"<body><h1>We'll be back soon</h1><p>The weather service is under maintenance.</p></body></html>\n"
)
_DAILY = re.compile(r"^/stations/(?P<station>[A-Za-z0-9_-]+)/daily/(?P<month>\d{4}-\d{2})\.csv$")
_DAILY_JSON = re.compile(r"^/stations/(?P<station>[A-Za-z0-9_-]+)/daily\.json$")
_LEGACY = re.compile(r"^/noaa/(?P<station>[A-Za-z0-9_-]+)/(?P<month>\d{4}-\d{2})\.txt$")


@dataclass
class Faults:
    """Faults still to be served to requests whose path contains ``match``."""

    fail: int = 0
    html: int = 0
    truncate: int = 0
    delay_s: float = 0.0
    delay_n: int = 0
    match: str = ""


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: list[Faults] = field(default_factory=list)
    requests: Counter = field(default_factory=Counter)
    served: Counter = field(default_factory=Counter)
    #: query-string faults: requests seen per full URL (path + query)
    per_url: Counter = field(default_factory=Counter)


class WeatherData:
    """The observations, indexed by month."""

    def __init__(self, frame: pd.DataFrame | None = None) -> None:
        self.frame = frame if frame is not None else seattle_weather()

    @cached_property
    def by_month(self) -> dict[str, pd.DataFrame]:
        df = self.frame.copy()
        df["month"] = [d.strftime("%Y-%m") for d in df["date"]]
        return {m: g.sort_values("date") for m, g in df.groupby("month")}

    def daily_csv(self, station: str, month: str) -> bytes | None:
        rows = self.by_month.get(month)
        if rows is None:
            return None
        lines = [CSV_HEADER]
        for r in rows.itertuples(index=False):
            lines.append(
                f"{station},{r.date.isoformat()},{r.temp_max:.1f},{r.temp_min:.1f},{r.precipitation:.1f},{r.wind:.1f},{r.weather}"
            )
        return ("\n".join(lines) + "\n").encode("utf-8")

    def daily_json(self, station: str, start: str, end: str) -> bytes | None:
        """Observations from ``start`` up to ``end`` (ISO dates, end exclusive) as a JSON document."""
        try:
            lo, hi = date.fromisoformat(start), date.fromisoformat(end)
        except ValueError:
            return None
        rows = self.frame[(self.frame["date"] >= lo) & (self.frame["date"] < hi)].sort_values("date")
        if rows.empty:
            return None
        observations = [
            {
                "station": station,
                "date": r.date.isoformat(),
                "temperature": {"max_c": round(float(r.temp_max), 1), "min_c": round(float(r.temp_min), 1)},
                "precipitation_mm": round(float(r.precipitation), 1),
                "wind_ms": round(float(r.wind), 1),
                "weather": r.weather,
            }
            for r in rows.itertuples(index=False)
        ]
        doc = {
            "station": station,
            "units": {"temperature": "degC", "precipitation": "mm", "wind": "m/s"},
            "observations": observations,
        }
        return (json.dumps(doc, indent=1) + "\n").encode("utf-8")

    def legacy_txt(self, station: str, month: str) -> bytes | None:
        rows = self.by_month.get(month)
        if rows is None:
            return None
        lines = ["date;precipitation;temp_max;temp_min;wind;weather"]
        for r in rows.itertuples(index=False):
            lines.append(f"{r.date.strftime('%d.%m.%Y')};{r.precipitation};{r.temp_max};{r.temp_min};{r.wind};{r.weather}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: a truncated body ends with the connection

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if self.server.verbose:
            super().log_message(format, *args)

    # ------------------------------------------------------------------------------------ responses
    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", *, cut: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)
        self.wfile.flush()
        if cut:
            self.close_connection = True

    def _json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload, indent=1).encode(), "application/json")

    # ------------------------------------------------------------------------------------- control
    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if urlsplit(self.path).path != "/_faults":
            return self._send(404, b"not found\n")
        length = int(self.headers.get("Content-Length") or 0)
        try:
            spec = json.loads(self.rfile.read(length) or b"{}")
            faults = Faults(**spec)
        except (ValueError, TypeError) as exc:
            return self._send(400, f"bad fault spec: {exc}\n".encode())
        self.server.inject(faults)
        self._json(200, {"pending": len(self.server.state.pending)})

    def do_DELETE(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != "/_faults":
            return self._send(404, b"not found\n")
        self.server.clear()
        self._json(200, {"pending": 0})

    # ---------------------------------------------------------------------------------------- data
    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        path = parts.path
        state = self.server.state
        if path == "/health":
            return self._send(200, b"ok\n")
        if path == "/_stats":
            with state.lock:
                return self._json(200, {"requests": dict(state.requests), "faults_served": dict(state.served)})
        if path == "/stations":
            return self._send(200, "".join(f"{s},{n}\n" for s, n in STATIONS.items()).encode())
        # faults and request counts match the whole target: a from/to-date API names its month in the query
        target = self.path
        with state.lock:
            state.requests[target] += 1
            state.per_url[self.path] += 1
            seen = state.per_url[self.path]
            fault = self._take_fault(target, parse_qs(parts.query), seen)
            if fault:
                state.served[fault] += 1
        delay = self._delay(target, parse_qs(parts.query), seen)
        if delay:
            time.sleep(delay)
        if fault == "fail":
            return self._send(500, b"internal server error (injected)\n")
        if fault == "html":
            return self._send(200, HTML_PAGE, "text/html; charset=utf-8")
        body, ctype = self._data(path, parse_qs(parts.query))
        if body is None:
            return self._send(404, f"no observations for {path}\n".encode())
        self._send(200, body, ctype, cut=fault == "truncate")

    def _take_fault(self, path: str, query: dict[str, list[str]], seen: int) -> str | None:
        for kind in ("fail", "html", "truncate"):
            if kind in query and seen <= int(query[kind][0]):
                return kind
        for pending in self.server.state.pending:
            if pending.match not in path:
                continue
            for kind in ("fail", "html", "truncate"):
                if getattr(pending, kind) > 0:
                    setattr(pending, kind, getattr(pending, kind) - 1)
                    return kind
        return None

    def _delay(self, path: str, query: dict[str, list[str]], seen: int) -> float:
        if "delay" in query:
            limit = int(query.get("delay_n", ["0"])[0])
            if not limit or seen <= limit:
                return float(query["delay"][0])
        with self.server.state.lock:
            for pending in self.server.state.pending:
                if pending.match in path and pending.delay_s > 0 and pending.delay_n > 0:
                    pending.delay_n -= 1
                    self.server.state.served["delay"] += 1
                    return pending.delay_s
        return 0.0

    def _data(self, path: str, query: dict[str, list[str]]) -> tuple[bytes | None, str]:
        data = self.server.data
        if m := _DAILY_JSON.match(path):
            if m["station"] not in STATIONS:
                return None, ""
            start, end = query.get("start", [""])[0], query.get("end", [""])[0]
            return data.daily_json(m["station"], start, end), "application/json"
        if m := _DAILY.match(path):
            if m["station"] not in STATIONS:
                return None, ""
            return data.daily_csv(m["station"], m["month"]), "text/csv; charset=utf-8"
        if m := _LEGACY.match(path):
            if m["station"] not in STATIONS:
                return None, ""
            return data.legacy_txt(m["station"], m["month"]), "text/plain; charset=utf-8"
        return None, ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a request that is sleeping on an injected delay

    def __init__(self, address: tuple[str, int], data: WeatherData, verbose: bool) -> None:
        super().__init__(address, _Handler)
        self.data = data
        self.verbose = verbose
        self.state = _State()

    def handle_error(self, request, client_address) -> None:
        # a client that gave up (timeout) closes its socket while a delayed answer is being written
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)

    def inject(self, faults: Faults) -> None:
        with self.state.lock:
            self.state.pending.append(faults)

    def clear(self) -> None:
        with self.state.lock:
            self.state.pending.clear()
            self.state.requests.clear()
            self.state.served.clear()
            self.state.per_url.clear()


class WeatherServer:
    """The provider in a background thread, bound to ``host`` (127.0.0.1) on ``port`` (0 = a free one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, data: WeatherData | None = None, verbose: bool = False) -> None:
        self._server = _Server((host, port), data or WeatherData(), verbose)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{host}:{self.port}"

    def start(self) -> WeatherServer:
        self._server.data.by_month  # noqa: B018 - index once before serving
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"weather-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def inject(
        self, *, fail: int = 0, html: int = 0, truncate: int = 0, delay_s: float = 0.0, delay_n: int = 0, match: str = ""
    ) -> None:
        """Faults for the next requests whose path contains ``match`` (as ``POST /_faults`` does)."""
        self._server.inject(Faults(fail=fail, html=html, truncate=truncate, delay_s=delay_s, delay_n=delay_n, match=match))

    def clear(self) -> None:
        """Drop pending faults and reset the request counters."""
        self._server.clear()

    def requests(self, path_part: str = "") -> int:
        """How many data requests reached the server (paths containing ``path_part``)."""
        with self._server.state.lock:
            return sum(n for p, n in self._server.state.requests.items() if path_part in p)

    def __enter__(self) -> WeatherServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start(host: str = "127.0.0.1", port: int = 8765, *, verbose: bool = False) -> WeatherServer:
    """Start a provider on ``port``, or on a free port when that one is taken."""
    try:
        server = WeatherServer(host, port, verbose=verbose)
    except OSError:
        server = WeatherServer(host, 0, verbose=verbose)
    return server.start()


def run_alongside(server: WeatherServer, command: list[str]) -> int:
    """Run ``command`` with ``LAKEHOUSE_WEATHER_URL`` pointing at ``server``; stop serving when it exits.

    The command runs in its own session and receives each SIGINT/SIGTERM sent to this process exactly
    once (``make ui``: Ctrl-C stops ``dagster dev`` gracefully, then the provider).
    """
    env = {**os.environ, "LAKEHOUSE_WEATHER_URL": server.url}
    child = subprocess.Popen(command, env=env, start_new_session=True)

    def forward(signum, _frame) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        code = child.wait()
    finally:
        server.stop()
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.sim.weather_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (a taken port falls back to a free one)")
    parser.add_argument("--quiet", action="store_true", help="do not log requests")
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after --: a command to run while serving, with LAKEHOUSE_WEATHER_URL set (e.g. dagster dev)",
    )
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    server = start(args.host, args.port, verbose=not args.quiet)
    print(f"weather provider: {server.url}/stations/{SEATTLE_STATION}/daily/2012-01.csv", flush=True)
    if command:
        return run_alongside(server, command)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
