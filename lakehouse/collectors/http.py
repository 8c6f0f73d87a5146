"""HTTP: one file per month from a URL template, with timeouts, retries and body checks.

The transport retries are urllib3's :class:`~urllib3.util.retry.Retry` mounted on a ``requests``
session: connection errors, read timeouts and HTTP 429/5xx answers are retried ``retries`` times with
exponential backoff (``backoff_s * 2**(n-1)``, ``Retry-After`` honoured). On top of that the body itself is
checked, because a server can fail *after* a 200:

* a body shorter than its ``Content-Length`` (the connection dropped mid-transfer) is **truncated**;
* a body that does not start with ``expect_prefix`` is **not the data** (typically an HTML error or
  maintenance page served with status 200);
* an empty body is not a month of data.

Such bodies are re-requested (same retry budget); when every attempt fails the collector raises
:class:`RejectedResponse`, which carries the last bytes received so the landing zone can keep them for
inspection (under ``_rejected/``, never as a landed file). Nothing partial is ever landed: the collector
returns complete bodies only, and :func:`lakehouse.collectors.landing.land` writes them atomically.

Credentials never reach the manifest or an error message: header values come from environment variables
(``headers_env``, read through :func:`lakehouse.settings.secret`), and the recorded origin is the URL with
any ``user:password@`` removed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import ProtocolError as Urllib3ProtocolError
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeout
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

from lakehouse import settings
from lakehouse.collectors.base import Fetched, template_values
from lakehouse.collectors.landing import CollectorError
from lakehouse.specs.models import HttpCollector

#: statuses worth asking again: rate limiting and server-side failures
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "lakehouse-collector/0.1 (+requests)"


class RejectedResponse(CollectorError):
    """The provider answered, but the body is not a complete month of data. ``data`` keeps what arrived."""

    def __init__(self, message: str, *, name: str, data: bytes) -> None:
        super().__init__(message)
        self.name = name
        self.data = data


def redact(url: str) -> str:
    """``url`` without ``user:password@`` (safe for manifests, logs and errors)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def session_for(spec: HttpCollector) -> requests.Session:
    """A ``requests`` session whose adapter retries transient failures with exponential backoff."""
    retry = Retry(
        total=spec.retries,
        connect=spec.retries,
        read=spec.retries,
        status=spec.retries,
        other=0,
        backoff_factor=spec.backoff_s,
        backoff_max=max(spec.backoff_s * 8, 1.0),
        status_forcelist=sorted(RETRY_STATUSES),
        allowed_methods=frozenset({"GET"}),
        raise_on_status=False,  # the last 5xx answer comes back; we name its status in the error
        respect_retry_after_header=True,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def _headers(spec: HttpCollector, where: str) -> dict[str, str]:
    headers = {}
    for header, env_name in spec.headers_env.items():
        value = settings.secret(env_name)
        if value is None:
            raise CollectorError(f"{where}: header {header!r} needs environment variable {env_name}, which is not set")
        headers[header] = value
    return headers


def _body_problem(spec: HttpCollector, response: requests.Response, body: bytes) -> str | None:
    """Why ``body`` is not a complete month of data (``None`` when it is)."""
    declared = response.headers.get("Content-Length")
    # with a Content-Encoding the header counts compressed bytes; requests has already decoded them
    if declared is not None and not response.headers.get("Content-Encoding"):
        try:
            expected = int(declared)
        except ValueError:
            expected = None
        if expected is not None and len(body) != expected:
            return f"truncated body: received {len(body)} of {expected} bytes announced by Content-Length"
    if not body.strip():
        return "empty body"
    if spec.expect_prefix is not None:
        start = body.lstrip(b"\xef\xbb\xbf")
        if not start.startswith(spec.expect_prefix.encode()):
            kind = "an HTML page" if start.lstrip()[:15].lower().startswith((b"<!doctype", b"<html")) else "unexpected content"
            ctype = response.headers.get("Content-Type", "?")
            return (
                f"{kind} (Content-Type {ctype}) where the data should start with {spec.expect_prefix!r};"
                f" body starts with {start[:60]!r}"
            )
    return None


def fetch(spec: HttpCollector, month: str, *, source: str = "?") -> Iterator[Fetched]:
    """Download ``source``'s file for ``month``; raises :class:`CollectorError` naming source, month, cause."""
    values = template_values(month, spec.params)
    url = spec.url.format(**values)
    name = spec.file_name.format(**values)
    origin = redact(url)
    where = f"source {source!r} month {month}"
    headers = _headers(spec, where)
    last_problem: str | None = None
    last_body = b""
    deadline = time.monotonic() + spec.deadline_s
    with session_for(spec) as session:
        for attempt in range(spec.retries + 1):
            if attempt:
                time.sleep(min(spec.backoff_s * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic())))
            _check_deadline(deadline, spec, where, origin)
            try:
                response = session.get(url, headers=headers, timeout=(spec.timeout_s, spec.timeout_s), stream=True)
            except requests.exceptions.RetryError as exc:
                raise CollectorError(f"{where}: GET {origin} failed after {spec.retries} retries: {_cause(exc)}") from None
            except requests.exceptions.Timeout as exc:
                raise CollectorError(
                    f"{where}: GET {origin} timed out (timeout {spec.timeout_s}s, {spec.retries} retries): {_cause(exc)}"
                ) from None
            except requests.exceptions.ChunkedEncodingError as exc:
                # the connection broke while the body was read: a truncated transfer, worth another try
                last_problem, last_body = f"truncated body: connection broken while reading ({_cause(exc)})", b""
                continue
            except requests.exceptions.RequestException as exc:
                kind = "timed out" if _timed_out(exc) else "failed"
                raise CollectorError(
                    f"{where}: GET {origin} {kind} (timeout {spec.timeout_s}s) after {spec.retries} retries: {_cause(exc)}"
                ) from None
            if response.status_code in RETRY_STATUSES:
                raise CollectorError(
                    f"{where}: GET {origin} answered HTTP {response.status_code} {response.reason}"
                    f" after {spec.retries} retries"
                )
            if response.status_code != 200:
                raise CollectorError(
                    f"{where}: GET {origin} answered HTTP {response.status_code} {response.reason}"
                    f" (not retried): {response.text[:200]!r}"
                )
            try:
                body = _read_body(response, spec, deadline, where, origin)
            except requests.exceptions.RequestException as exc:
                last_problem, last_body = f"truncated body: connection broken while reading ({_cause(exc)})", b""
                continue
            problem = _body_problem(spec, response, body)
            if problem is None:
                yield Fetched(name=name, data=body, origin=origin)
                return
            last_problem, last_body = problem, body
    raise RejectedResponse(
        f"{where}: GET {origin} rejected after {spec.retries + 1} attempt(s): {last_problem}",
        name=name,
        data=last_body,
    )


def _check_deadline(deadline: float, spec: HttpCollector, where: str, origin: str) -> None:
    if time.monotonic() > deadline:
        raise CollectorError(f"{where}: GET {origin} took longer than its deadline of {spec.deadline_s:g}s (collector.deadline_s)")


def _read_body(response: requests.Response, spec: HttpCollector, deadline: float, where: str, origin: str) -> bytes:
    """The body, read in chunks against the collect's deadline and the size cap (nothing is kept of a
    body that breaks either)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > spec.max_bytes:
        response.close()
        raise CollectorError(f"{where}: GET {origin} announces {int(declared):,} bytes, more than max_bytes {spec.max_bytes:,}")
    chunks, size = [], 0
    try:
        # read1 returns what has arrived (up to 64 KiB): a slow provider is checked against the deadline
        # after every few bytes, not after every full chunk
        while chunk := _read1(response):
            size += len(chunk)
            if size > spec.max_bytes:
                raise CollectorError(f"{where}: GET {origin} sent more than max_bytes {spec.max_bytes:,} bytes")
            chunks.append(chunk)
            _check_deadline(deadline, spec, where, origin)
    finally:
        response.close()
    return b"".join(chunks)


def _read1(response: requests.Response) -> bytes:
    try:
        return response.raw.read1(1 << 16, decode_content=True)
    except (Urllib3ProtocolError, Urllib3ReadTimeout, OSError) as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the reasons wrapped inside it (requests → urllib3 MaxRetryError → socket error)."""
    chain = [exc]
    for _ in range(6):
        inner = getattr(chain[-1], "reason", None)
        if inner is None and chain[-1].args and isinstance(chain[-1].args[0], BaseException):
            inner = chain[-1].args[0]
        if not isinstance(inner, BaseException) or inner in chain:
            break
        chain.append(inner)
    return chain


def _timed_out(exc: BaseException) -> bool:
    chain = _chain(exc)
    # urllib3's NewConnectionError subclasses ConnectTimeoutError, but it is a refused/failed connect
    if any(isinstance(e, NewConnectionError) for e in chain):
        return False
    return any(isinstance(e, (Urllib3Timeout, requests.exceptions.Timeout, TimeoutError)) for e in chain)


def _cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error chain, on one line, without credentials."""
    reason = _chain(exc)[-1]
    text = f"{type(reason).__name__}: {reason}".replace("\n", " ")
    return redact_text(text)[:300]


def redact_text(text: str) -> str:
    """Remove ``user:password@`` from any URL inside ``text``."""
    return re.sub(r"(https?://)[^/@\s]+@", r"\1", text)
