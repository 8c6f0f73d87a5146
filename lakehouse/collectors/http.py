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

Credentials never reach the manifest, a log line or an error message: header values and query parameters
that carry a key come from environment variables (``headers_env``, ``params_env``, read through
:func:`lakehouse.settings.secret`); every text a provider sends back (an error body, a reason) is scrubbed
of those values and of the URL's password before it goes into a message (:class:`Secrets`), and the
recorded origin is the URL without ``user:password@`` and with token-like query values masked
(:func:`redact`). The secret headers are dropped when a redirect leads to another host (requests drops
``Authorization`` itself, not custom headers such as ``X-Api-Key``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

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


#: query parameters whose value is a credential, by a word in their name (``api_key``, ``access_token``,
#: ``X-Amz-Signature``, ``sig``, ``password``...)
SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|sig|auth|credential|session|bearer", re.IGNORECASE)
MASK = "***"


def redact(url: str, *, secret_params: frozenset[str] = frozenset()) -> str:
    """``url`` without ``user:password@`` and with the values of token-like query parameters (and of
    ``secret_params``) masked: safe for manifests, logs and errors."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]  # without user:password@
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_PARAM.search(k) or k in secret_params for k, _ in pairs):
            query = urlencode(
                [(k, MASK if SECRET_PARAM.search(k) or k in secret_params else v) for k, v in pairs], safe="*{}", quote_via=quote
            )
    if host == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, host, parts.path, query, parts.fragment))


class Secrets:
    """The secret values of one collect (header and parameter values from the environment, the URL's
    password and token-like query values), and the scrubbing of any text before it is shown."""

    def __init__(self, values: list[str]) -> None:
        found = set()
        for value in values:
            if value and len(value) >= 4:
                found.add(value)
                # "Bearer <token>": a provider may echo the token alone
                found.update(part for part in value.split() if len(part) >= 8)
        self.values = sorted(found, key=len, reverse=True)

    @classmethod
    def of(cls, url: str, values: list[str]) -> Secrets:
        parts = urlsplit(url)
        from_url = [parts.password or ""] + [v for k, v in parse_qsl(parts.query) if SECRET_PARAM.search(k)]
        return cls([*values, *from_url])

    def text(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, MASK)
            quoted = quote(value, safe="")
            if quoted != value:
                text = text.replace(quoted, MASK)
        return redact_text(text)

    def bytes(self, data: bytes) -> bytes:
        for value in self.values:
            data = data.replace(value.encode(), MASK.encode())
        return data


class _Session(requests.Session):
    """A session that drops the secret headers on a redirect to another host, as requests does for
    ``Authorization`` (same rule: :meth:`requests.Session.should_strip_auth`)."""

    secret_headers: frozenset[str] = frozenset()

    def rebuild_auth(self, prepared_request, response):
        super().rebuild_auth(prepared_request, response)
        if self.should_strip_auth(response.request.url, prepared_request.url):
            for header in self.secret_headers:
                prepared_request.headers.pop(header, None)


def session_for(spec: HttpCollector) -> requests.Session:
    """A ``requests`` session whose adapter retries transient failures with exponential backoff, and that
    never sends ``headers_env`` to another host after a redirect."""
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
    session = _Session()
    session.secret_headers = frozenset(spec.headers_env)
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def _from_env(names: dict[str, str], what: str, where: str) -> dict[str, str]:
    values = {}
    for option, env_name in names.items():
        value = settings.secret(env_name)
        if value is None:
            raise CollectorError(f"{where}: {what} {option!r} needs environment variable {env_name}, which is not set")
        values[option] = value
    return values


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
    """Download ``source``'s file for ``month``; raises :class:`CollectorError` naming source, month, cause
    (scrubbed of every secret value of the collect)."""
    values = template_values(month, spec.params)
    url = spec.url.format(**values)
    where = f"source {source!r} month {month}"
    headers = _from_env(spec.headers_env, "header", where)
    params = _from_env(spec.params_env, "query parameter", where)
    secrets = Secrets.of(url, [*headers.values(), *params.values()])
    try:
        yield from _fetch(spec, url, spec.file_name.format(**values), where, headers, params)
    except RejectedResponse as exc:
        raise RejectedResponse(secrets.text(str(exc)), name=exc.name, data=secrets.bytes(exc.data)) from None
    except CollectorError as exc:
        raise CollectorError(secrets.text(str(exc))) from None


def _fetch(
    spec: HttpCollector, url: str, name: str, where: str, headers: dict[str, str], params: dict[str, str]
) -> Iterator[Fetched]:
    if params:
        url += ("&" if urlsplit(url).query else "?") + urlencode(params, quote_via=quote)
    origin = redact(url, secret_params=frozenset(params))
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
                    f"{where}: GET {origin} answered HTTP {response.status_code} {response.reason} after {spec.retries} retries"
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
        raise CollectorError(
            f"{where}: GET {origin} took longer than its deadline of {spec.deadline_s:g}s (collector.deadline_s)"
        )


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
    """Every URL inside ``text`` :func:`redact`-ed."""
    return re.sub(r"https?://[^\s'\"<>]+", lambda m: redact(m.group(0)), text)
