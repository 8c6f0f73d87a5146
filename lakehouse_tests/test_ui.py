"""The UI guard (issue 26, finding 5): forged Host and Origin, mutations by GET, the token. Requests go
straight into the ASGI middleware around a recording app (and, for one test, around Dagster's own
webserver app); each test can fail."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from urllib.parse import quote

import pytest

from lakehouse.ui import COOKIE, Guard, GuardMiddleware, UIConfigError
from lakehouse_tests.conftest import REPO

PORT = 3000
SELF = f"http://127.0.0.1:{PORT}"
WIPE = 'mutation { wipeAssets(assetPartitionRanges: [{assetKey: {path: ["trusted", "meter_readings"]}}]) { __typename } }'


class Recorder:
    """An ASGI app standing in for Dagster: records every request that reaches it."""

    def __init__(self) -> None:
        self.reached: list[tuple[str, str]] = []

    async def __call__(self, scope, receive, send):
        self.reached.append((scope.get("method", "WS"), scope["path"]))
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"dagster"})


def call(
    app,
    method: str = "GET",
    path: str = "/graphql",
    query: str = "",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    kind: str = "http",
) -> tuple[int, dict[str, str], str]:
    """One request through ``app``: (status, response headers, body text); websockets: 101 or 403."""
    sent: list[dict] = []
    hdrs = {"host": f"127.0.0.1:{PORT}", **(headers or {})}
    scope = {
        "type": kind,
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in hdrs.items() if v is not None],
        "scheme": "http",
        "server": ("127.0.0.1", PORT),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "http_version": "1.1",
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}] if kind == "http" else [{"type": "websocket.connect"}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    if kind == "websocket":
        return (101 if sent[0]["type"] == "websocket.accept" else 403), {}, sent[0].get("reason", "")
    start = next(m for m in sent if m["type"] == "http.response.start")
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, text


@pytest.fixture
def guarded():
    inner = Recorder()
    return GuardMiddleware(inner, Guard.for_bind("127.0.0.1", PORT)), inner


def test_a_mutation_from_a_foreign_origin_is_refused_and_never_reaches_dagster(guarded):
    app, inner = guarded
    body = json.dumps({"query": WIPE}).encode()
    for headers in (
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"referer": "https://evil.example/page"},
        {"origin": f"http://127.0.0.1:{PORT + 1}"},
    ):
        status, _, text = call(app, "POST", body=body, headers={"content-type": "application/json", **headers})
        assert status == 403 and "cross-origin" in text, (headers, status, text)
    # the form POST a foreign page can send without a preflight: the query rides in the URL
    status, _, _ = call(
        app,
        "POST",
        query="query=" + quote(WIPE),
        headers={"origin": "https://evil.example", "content-type": "application/x-www-form-urlencoded"},
    )
    assert status == 403
    assert inner.reached == []


def test_a_same_origin_query_and_mutation_pass(guarded):
    app, inner = guarded
    status, _, text = call(
        app, "POST", body=b'{"query": "{ version }"}', headers={"origin": SELF, "content-type": "application/json"}
    )
    assert (status, text) == (200, "dagster")
    status, _, _ = call(app, "POST", body=json.dumps({"query": WIPE}).encode(), headers={"origin": f"http://localhost:{PORT}"})
    assert status == 200
    # scripts (no Origin, no Referer) keep working: the e2e tests and `curl` drive GraphQL this way
    assert call(app, "POST", body=b'{"query": "{ version }"}')[0] == 200
    assert len(inner.reached) == 3


def test_a_mutation_by_get_is_refused_whatever_its_origin(guarded):
    app, inner = guarded
    for headers in ({}, {"origin": SELF}, {"referer": f"{SELF}/assets"}):
        status, hdrs, text = call(app, "GET", query="query=" + quote(WIPE), headers=headers)
        assert status == 405 and hdrs["allow"] == "POST" and "mutation" in text
    # several operations, the mutation named by operationName, or hidden behind a trailing slash
    two = "query A { version } mutation B { wipeAssets(assetPartitionRanges: []) { __typename } }"
    assert call(app, "GET", query=f"query={quote(two)}&operationName=B")[0] == 405
    assert call(app, "GET", path="/graphql/", query="query=" + quote(WIPE))[0] == 405
    assert call(app, "GET", query="query=" + quote("mutation {"))[0] == 400
    assert inner.reached == []
    assert call(app, "GET", query="query=" + quote("{ version }"))[0] == 200  # reading by GET is fine
    assert (
        call(app, "GET", path="/assets", headers={"referer": "https://elsewhere.example/"})[0] == 200
    )  # a link from another site


def test_a_forged_host_is_refused(guarded):
    app, inner = guarded
    for host in ("evil.example", f"evil.example:{PORT}", "127.0.0.1:9999", f"127.0.0.1.nip.io:{PORT}", ""):
        status, _, text = call(app, "GET", path="/", headers={"host": host})
        assert status == 403 and "host not allowed" in text, (host, status)
    status, _, _ = call(
        app, "POST", body=b'{"query": "{ version }"}', headers={"host": "evil.example", "origin": "http://evil.example"}
    )
    assert status == 403
    assert inner.reached == []
    for host in (f"localhost:{PORT}", f"[::1]:{PORT}", f"127.0.0.1:{PORT}", f"LOCALHOST:{PORT}"):
        assert call(app, "GET", path="/", headers={"host": host})[0] == 200, host


def test_a_foreign_websocket_is_refused(guarded):
    app, inner = guarded
    assert call(app, path="/graphql", kind="websocket", headers={"origin": "https://evil.example"})[0] == 403
    assert inner.reached == []
    assert call(app, path="/graphql", kind="websocket", headers={"origin": SELF})[0] == 101


def test_a_non_loopback_bind_needs_a_token_and_every_request_then_carries_it():
    with pytest.raises(UIConfigError, match="LAKEHOUSE_UI_TOKEN"):
        Guard.for_bind("0.0.0.0", PORT, ["lake.example"])
    with pytest.raises(UIConfigError, match="--allow-host"):
        Guard.for_bind("0.0.0.0", PORT, [], token="s3cret")
    inner = Recorder()
    app = GuardMiddleware(inner, Guard.for_bind("0.0.0.0", PORT, ["lake.example"], token="s3cret"))
    host = {"host": f"lake.example:{PORT}"}
    assert call(app, "GET", path="/assets", headers=host)[0] == 401
    assert call(app, "GET", path="/assets", headers={**host, "authorization": "Bearer wrong"})[0] == 401
    assert call(app, "GET", path="/assets", query="token=wrong", headers=host)[0] == 401
    assert call(app, "GET", path="/assets", headers={**host, "cookie": f"{COOKIE}=wrong"})[0] == 401
    assert inner.reached == []
    # the login sets the cookie and drops the token from the address
    status, hdrs, _ = call(app, "GET", path="/assets", query="token=s3cret&view=lineage", headers=host)
    assert status == 303 and hdrs["location"] == "/assets?view=lineage"
    assert (
        hdrs["set-cookie"].startswith(f"{COOKIE}=s3cret;")
        and "HttpOnly" in hdrs["set-cookie"]
        and "SameSite=Lax" in hdrs["set-cookie"]
    )
    assert call(app, "GET", path="/assets", headers={**host, "cookie": f"other=1; {COOKIE}=s3cret"})[0] == 200
    assert call(app, "POST", body=b'{"query": "{ version }"}', headers={**host, "authorization": "Bearer s3cret"})[0] == 200
    # the token does not lift the origin rule: a page elsewhere cannot ride the user's cookie
    status, _, _ = call(app, "POST", body=b"{}", headers={**host, "cookie": f"{COOKIE}=s3cret", "origin": "https://evil.example"})
    assert status == 403
    assert call(app, "GET", path="/", headers={"host": f"10.0.0.5:{PORT}", "authorization": "Bearer s3cret"})[0] == 403


def test_the_launcher_refuses_a_non_loopback_bind_without_a_token():
    env = {k: v for k, v in os.environ.items() if k != "LAKEHOUSE_UI_TOKEN"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "lakehouse.ui", "--host", "0.0.0.0", "--allow-host", "lake.example"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "LAKEHOUSE_UI_TOKEN" in done.stderr, done.stderr


def test_dagster_s_own_app_behind_the_guard():
    """The real webserver app: a forged-origin mutation is refused before Dagster; a same-origin query is answered."""
    from dagster import instance_for_test
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster_webserver.app import create_app_from_workspace_process_context

    with instance_for_test() as instance, WorkspaceProcessContext(instance, None, version="guarded") as context:
        app = GuardMiddleware(create_app_from_workspace_process_context(context), Guard.for_bind("127.0.0.1", PORT))
        query = json.dumps({"query": "{ version }"}).encode()
        status, _, text = call(app, "POST", body=query, headers={"origin": SELF, "content-type": "application/json"})
        assert status == 200 and json.loads(text)["data"] == {"version": "guarded"}
        status, _, text = call(
            app,
            "POST",
            body=json.dumps({"query": WIPE}).encode(),
            headers={"origin": "https://evil.example", "content-type": "application/json"},
        )
        assert status == 403 and "cross-origin" in text
        assert call(app, "GET", query="query=" + quote(WIPE))[0] == 405
