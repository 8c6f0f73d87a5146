"""The Dagster UI (webserver + daemon) behind a guard that only obeys its own pages.

    python -m lakehouse.ui [--host 127.0.0.1] [--port 3000] [--allow-host NAME[:PORT]] [--workspace workspace.yaml]

Serves Dagster's webserver app in this process, wrapped in :class:`Guard`, and runs ``dagster-daemon run``
beside it (sensors, schedules, automation, backfills); when either stops, both stop. The guard:

1. **Host allow-list** (DNS rebinding): the ``Host`` header must name the bind address, ``localhost``,
   ``127.0.0.1`` or ``[::1]`` with the port, or a name given with ``--allow-host``; otherwise 403.
2. **Same origin only**: a request whose ``Origin`` is not one of those hosts is refused (403), and so
   is a state-changing request (any method but GET/HEAD) or a websocket whose ``Referer`` is foreign when
   it has no ``Origin``. Clients that send neither (``curl``, scripts) pass. A GraphQL mutation sent by
   GET is refused (405) whatever its origin: a link or an ``<img>`` cannot change anything.
3. **Token** (``LAKEHOUSE_UI_TOKEN``): required to bind anything but a loopback address (the launcher
   refuses to start without it), optional on loopback. With a token set, every request needs it, as
   ``Authorization: Bearer <token>`` or as the cookie a ``?token=<token>`` visit sets (HttpOnly,
   SameSite=Lax), else 401. The token travels in clear over plain HTTP: put TLS in front of a non-loopback
   bind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from lakehouse import settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

COOKIE = "lakehouse_ui_token"
SAFE_METHODS = ("GET", "HEAD")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
log = logging.getLogger("lakehouse.ui")


class UIConfigError(ValueError):
    """The launcher was asked for an unsafe setup (a non-loopback bind without a token)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _unspecified(host: str) -> bool:
    """The "every interface" address of IPv4 or IPv6: no client names it."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _host_port(value: str, default_port: int) -> str:
    """``name:port`` (lower case, IPv6 in brackets) of a ``Host`` value or an ``--allow-host`` entry."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name, port = name + "]", rest[1:] if rest.startswith(":") else ""
    elif value.count(":") > 1:  # a bare IPv6 address
        name, port = f"[{value}]", ""
    else:
        name, _, port = value.partition(":")
    return f"{name}:{port or default_port}"


@dataclass(frozen=True)
class Guard:
    """What the UI accepts: ``hosts`` (``name:port``) and, when set, the ``token``."""

    hosts: frozenset[str]
    token: str | None = None

    @classmethod
    def for_bind(cls, host: str, port: int, allow: Iterable[str] = (), token: str | None = None) -> Guard:
        if not is_loopback(host) and not token:
            raise UIConfigError(
                f"the UI would listen on {host}, beyond this machine, without a token: set LAKEHOUSE_UI_TOKEN "
                "(see docs/reliability.md, 'Trust model: the UI and models') or bind 127.0.0.1"
            )
        bind = f"[{host}]" if ":" in host and not host.startswith("[") else host
        names = {*(LOOPBACK_NAMES if is_loopback(host) else ()), *([] if _unspecified(host) else [bind])}
        hosts = {_host_port(n, port) for n in names} | {_host_port(a, port) for a in allow}
        if not hosts:
            raise UIConfigError(f"bound to {host}, the UI would answer to no name: give the names clients use with --allow-host")
        return cls(frozenset(hosts), token or None)

    def origin_ok(self, origin: str) -> bool:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file:// pages) included
        return _host_port(parts.netloc, 443 if parts.scheme == "https" else 80) in self.hosts

    def token_ok(self, headers: dict[str, str]) -> bool:
        if self.token is None:
            return True
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True
        try:
            jar = SimpleCookie(headers.get("cookie", ""))
        except CookieError:
            return False
        return COOKIE in jar and hmac.compare_digest(jar[COOKIE].value.encode(), self.token.encode())

    def check(self, kind: str, method: str, path: str, query: str, headers: dict[str, list[str]]) -> tuple[int, str] | None:
        """``(status, reason)`` when the request is refused, None when it may reach Dagster."""
        one = {k: v[0] for k, v in headers.items()}
        hosts = headers.get("host", [])
        if len(hosts) != 1 or _host_port(hosts[0], 80) not in self.hosts:
            return 403, f"host not allowed: {', '.join(hosts) or '(none)'} (the UI answers to {', '.join(sorted(self.hosts))})"
        if any(len(headers.get(h, [])) > 1 for h in ("origin", "referer", "authorization", "cookie")):
            return 403, "repeated Origin/Referer/Authorization/Cookie header"
        if not self.token_ok(one):
            return 401, "this UI needs its token: open it once with ?token=<token>, or send 'Authorization: Bearer <token>'"
        origin = one.get("origin")
        if origin is not None and not self.origin_ok(origin):
            return 403, f"cross-origin request refused (Origin {origin})"
        if origin is None and (kind == "websocket" or method not in SAFE_METHODS):
            referer = one.get("referer")
            if referer and not self.origin_ok(referer):
                return 403, "cross-origin request refused (Referer of another site)"
        if kind == "http" and method in SAFE_METHODS and path.rstrip("/") == "/graphql":
            return _graphql_get(query)
        return None


def _graphql_get(query_string: str) -> tuple[int, str] | None:
    """A GraphQL document sent by GET may only read."""
    from graphql import GraphQLError, OperationType, parse
    from graphql.language import OperationDefinitionNode

    documents = [v for k, v in parse_qsl(query_string, keep_blank_values=True) if k == "query"]
    for text in documents:
        try:
            doc = parse(text)
        except GraphQLError as exc:
            return 400, f"GraphQL document does not parse: {exc.message}"
        if any(isinstance(d, OperationDefinitionNode) and d.operation == OperationType.MUTATION for d in doc.definitions):
            return 405, "a GraphQL mutation must be sent by POST from the UI's own pages"
    return None


class GuardMiddleware:
    """ASGI middleware: :meth:`Guard.check` for every HTTP request and websocket, and the ``?token=`` login."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive, send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers: dict[str, list[str]] = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.decode("latin-1").lower(), []).append(v.decode("latin-1"))
        method = scope.get("method", "GET").upper()
        query = scope.get("query_string", b"").decode("latin-1")
        if self.guard.token and kind == "http" and method in SAFE_METHODS:
            login = await self._login(scope, query, headers, send)
            if login:
                return
        refused = self.guard.check(kind, method, scope.get("path", ""), query, headers)
        if refused is None:
            return await self.app(scope, receive, send)
        status, reason = refused
        log.warning(f"refused {method if kind == 'http' else 'websocket'} {scope.get('path')}: {reason}")
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
            return
        await _respond(send, status, reason)

    async def _login(self, scope: Scope, query: str, headers: dict[str, list[str]], send) -> bool:
        """``?token=<token>``: set the cookie and redirect to the same page without the token."""
        pairs = parse_qsl(query, keep_blank_values=True)
        given = [v for k, v in pairs if k == "token"]
        if not given:
            return False
        hosts = headers.get("host", [])
        if len(hosts) != 1 or _host_port(hosts[0], 80) not in self.guard.hosts:
            return False  # the host check refuses it
        assert self.guard.token is not None
        if not hmac.compare_digest(given[0].encode(), self.guard.token.encode()):
            await _respond(send, 401, "wrong token")
            return True
        rest = urlencode([(k, v) for k, v in pairs if k != "token"])
        location = scope.get("path", "/") + (f"?{rest}" if rest else "")
        cookie = f"{COOKIE}={self.guard.token}; Path=/; HttpOnly; SameSite=Lax"
        await _respond(
            send, 303, "signed in", [(b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1"))]
        )
        return True


async def _respond(send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = (text + "\n").encode()
    head = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    if status == 405:
        head.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------------ launcher
@contextlib.asynccontextmanager
async def _lifespan(_app):
    with contextlib.suppress(asyncio.CancelledError):  # uvicorn cancels the lifespan task on shutdown
        yield


@contextlib.contextmanager
def _dagster_app(workspace: Path):
    """Dagster's webserver app over ``workspace`` (what ``dagster-webserver -w`` builds), on the instance of
    ``DAGSTER_HOME``. Dagster has no public API for this: the two private names are the ones its CLI uses."""
    from dagster import DagsterInstance
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster_webserver.app import create_app_from_workspace_process_context
    from dagster_webserver.cli import DEFAULT_DB_STATEMENT_TIMEOUT, DEFAULT_POOL_MAX_OVERFLOW, DEFAULT_POOL_RECYCLE
    from dagster_webserver.version import __version__

    with DagsterInstance.get() as instance:
        instance.optimize_for_webserver(DEFAULT_DB_STATEMENT_TIMEOUT, DEFAULT_POOL_RECYCLE, DEFAULT_POOL_MAX_OVERFLOW)
        with WorkspaceProcessContext(
            instance, WorkspaceFileTarget(paths=[str(workspace)]), version=__version__, code_server_log_level="WARNING"
        ) as context:
            yield create_app_from_workspace_process_context(context, "", 2000, lifespan=_lifespan)


def _stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGINT (the daemon stops its threads and code server), SIGKILL if it has not gone in ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(host: str, port: int, guard: Guard, workspace: Path) -> int:
    """The guarded webserver on ``host:port`` and the daemon beside it, until either stops or a signal."""
    import uvicorn

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops both as Ctrl-C does
    daemon = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)])
    code = 0
    try:
        with _dagster_app(workspace) as app:
            server = uvicorn.Server(uvicorn.Config(GuardMiddleware(app, guard), host=host, port=port, log_level="warning"))

            def watch() -> None:
                nonlocal code
                while not server.should_exit:
                    if daemon.poll() is not None:
                        log.error(f"dagster-daemon exited with {daemon.returncode}: stopping the webserver")
                        code = 1
                        server.should_exit = True
                    time.sleep(2)

            threading.Thread(target=watch, name="daemon-watch", daemon=True).start()
            log.info(
                f"Dagster UI on http://{host if ':' not in host else f'[{host}]'}:{port} (hosts: {', '.join(sorted(guard.hosts))}"
                f"{'; token required' if guard.token else ''})"
            )
            server.run()
    except KeyboardInterrupt:
        pass
    finally:
        _stop(daemon)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lakehouse.ui", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; anything else needs LAKEHOUSE_UI_TOKEN)"
    )
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME[:PORT]",
        help="another name the UI answers to (the machine's DNS name behind a proxy); repeatable",
    )
    parser.add_argument("--workspace", type=Path, default=settings.REPO_ROOT / "workspace.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        guard = Guard.for_bind(args.host, args.port, args.allow_host, settings.ui_token())
    except UIConfigError as exc:
        print(f"lakehouse.ui: {exc}", file=sys.stderr)
        return 2
    return serve(args.host, args.port, guard, args.workspace.resolve())


if __name__ == "__main__":
    sys.exit(main())
