"""The dashboard as a real process in front of the real gateway, kanban and sandbox:
it acts with the logged-in key, sessions end server-side, secrets never reach a
browser, a port in use is one line, and SIGTERM drains cleanly.
"""

from __future__ import annotations

import http.client
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from longshore.kanban.v1 import kanban_service_pb2, kanban_service_pb2_grpc, profile_pb2
from longshore.sandbox.v1 import sandbox_pb2

from tests.integration.dashboard.dashboard_process import (
    SESSION_SECRET,
    DashboardProcess,
    cli,
    dashboard_process,
)
from tests.integration.gateway.stack import RealStack, auth, real_stack
from tests.support.processes import REPO_ROOT, service_env

PLANTED = "planted-secret-value-83c1"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str
) -> Iterator[RealStack]:
    home = tmp_path_factory.mktemp("dash-user")
    with real_stack(home, deployment=f"t{run_id}-dashuser", image=sandbox_image) as s:
        yield s


@pytest.fixture(scope="module")
def gated(stack: RealStack) -> Iterator[DashboardProcess]:
    env = {
        "LONGSHORE_DASHBOARD_REQUIRE_LOGIN": "1",
        "LONGSHORE_DASHBOARD_SESSION_SECRET": SESSION_SECRET,
    }
    with dashboard_process(stack, env=env, name="dashboard-gated-user") as d:
        yield d


def task_id_of(created: Any) -> str:
    return str(created["task_id"] if "task_id" in created else created["task"]["task_id"])


class Browser:
    """An HTTP client with a cookie jar, against one dashboard."""

    def __init__(self, dash: DashboardProcess) -> None:
        self.dash = dash
        self.cookies: dict[str, str] = {}
        self.token = ""
        self.bodies: list[bytes] = []

    def request(
        self, method: str, path: str, *, body: bytes | None = None, ctype: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.dash.port, timeout=30)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if self.token:
            headers["X-Longshore-Token"] = self.token
        if ctype:
            headers["Content-Type"] = ctype
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                if "Max-Age=0" in value:
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = rest.split(";", 1)[0]
        conn.close()
        self.bodies.append(data)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def json(self, method: str, path: str, data: Any = None) -> tuple[int, Any]:
        import json

        body = json.dumps(data).encode() if data is not None else None
        status, _, raw = self.request(method, path, body=body, ctype="application/json")
        return status, json.loads(raw) if raw else None

    def login(self, key: str) -> int:
        """Log in with ``key`` through the form; the login's HTTP status."""
        return self.login_reply(key)[0]

    def login_reply(self, key: str) -> tuple[int, dict[str, str]]:
        status, _, page = self.request("GET", "/login?next=/boards/default")
        assert status == 200, page
        match = re.search(rb'name="csrf_token" value="([^"]+)"', page)
        assert match is not None
        form = urlencode({"csrf_token": match.group(1).decode(), "next": "/", "api_key": key})
        status, headers, _ = self.request(
            "POST", "/login", body=form.encode(), ctype="application/x-www-form-urlencoded"
        )
        if status == 303:
            _, _, board = self.request("GET", "/boards/default")
            found = re.search(rb'name="longshore-token" content="([^"]*)"', board)
            assert found is not None
            self.token = found.group(1).decode()
        return status, headers


def test_a_read_key_gets_a_read_only_dashboard_and_the_gateways_refusal(
    stack: RealStack, gated: DashboardProcess
) -> None:
    task_id = task_id_of(cli(stack, "task", "create", "Read but do not touch"))
    reader = Browser(gated)
    assert reader.login(stack.keys.reader) == 303
    _, _, board = reader.request("GET", "/boards/default")
    assert b'content="0"' in board and b'id="create-form"' not in board
    status, refused = reader.json("POST", f"/api/tasks/{task_id}/move", {"status": "todo"})
    assert status == 403, refused
    assert refused["grpc_code"] == "PERMISSION_DENIED"
    assert "MoveTask needs scope 'write'" in refused["message"]
    assert "'viewer'" in refused["message"]
    status, created = reader.json("POST", "/api/tasks", {"title": "not allowed"})
    assert status == 403, created
    shown = cli(stack, "task", "show", task_id)
    assert shown.get("task", shown)["status"] in ("ready", "TASK_STATUS_READY")
    status, detail = reader.json("GET", "/api/status/detail")
    assert status == 200 and detail["gateway"]["scopes"] == ["read"]

    admin = Browser(gated)
    assert admin.login(stack.keys.admin) == 303
    status, moved = admin.json("POST", f"/api/tasks/{task_id}/move", {"status": "todo"})
    assert status == 200 and moved["task"]["status"] == "todo"


def test_logout_then_the_old_cookie_is_refused(stack: RealStack, gated: DashboardProcess) -> None:
    browser = Browser(gated)
    assert browser.login(stack.keys.admin) == 303
    old = dict(browser.cookies)
    form = urlencode({"csrf_token": browser.token}).encode()
    status, _, _ = browser.request(
        "POST", "/logout", body=form, ctype="application/x-www-form-urlencoded"
    )
    assert status == 303 and "longshore_session" not in browser.cookies
    replay = Browser(gated)
    replay.cookies = old
    status, body = replay.json("GET", "/api/boards")
    assert status == 401 and body["error"] == "session_ended"


def test_the_eleventh_wrong_login_is_throttled(stack: RealStack) -> None:
    # A dashboard of its own: every browser here comes from 127.0.0.1.
    env = {
        "LONGSHORE_DASHBOARD_REQUIRE_LOGIN": "1",
        "LONGSHORE_DASHBOARD_SESSION_SECRET": SESSION_SECRET,
    }
    with dashboard_process(stack, env=env, name="dashboard-throttle") as dash:
        browser = Browser(dash)
        statuses = [browser.login(f"lsk_wrong_{n}") for n in range(10)]
        assert statuses == [401] * 10
        status, headers = browser.login_reply(stack.keys.admin)
        assert status == 429 and 0 < int(headers["retry-after"]) <= 60
        assert b"Too many wrong API keys" in browser.bodies[-1]


def test_no_dashboard_response_carries_an_env_value(
    stack: RealStack, gated: DashboardProcess, sandbox_image: str
) -> None:
    channel = stack.channel()
    try:
        spec = sandbox_pb2.SandboxSpec(image=sandbox_image, env={"PROFILE_TOKEN": PLANTED})
        kanban_service_pb2_grpc.KanbanServiceStub(channel).CreateProfile(
            kanban_service_pb2.CreateProfileRequest(
                profile=profile_pb2.Profile(
                    name="secretive", executor=profile_pb2.EXECUTOR_NONE, sandbox_spec=spec
                )
            ),
            metadata=auth(stack.keys.admin),
            timeout=30,
        )
    finally:
        channel.close()
    task_id = task_id_of(
        cli(stack, "task", "create", "Holds a secret", "--env", f"TASK_TOKEN={PLANTED}")
    )
    for key in (stack.keys.admin, stack.keys.reader):
        browser = Browser(gated)
        assert browser.login(key) == 303
        for path in (
            "/boards/default",
            f"/tasks/{task_id}",
            "/sandboxes",
            "/dispatcher",
            "/status",
            "/api/boards",
            "/api/profiles",
            "/api/boards/default/tasks",
            f"/api/tasks/{task_id}",
            "/api/sandboxes",
            "/api/dispatcher?board_id=default",
            "/api/status/detail",
        ):
            status, _, _ = browser.request("GET", path)
            assert status == 200, (path, browser.bodies[-1][:300])
        assert b"TASK_TOKEN" in b"".join(browser.bodies)  # the names are there
        assert b"PROFILE_TOKEN" in b"".join(browser.bodies)
        leaks = [body[:200] for body in browser.bodies if PLANTED.encode() in body]
        assert leaks == []


def test_a_port_in_use_is_one_line_and_a_non_zero_exit(stack: RealStack) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "services.dashboard"],
            env=service_env(
                {
                    "LONGSHORE_HOME": str(stack.home),
                    "LONGSHORE_DASHBOARD_LISTEN": f"127.0.0.1:{port}",
                    "LONGSHORE_GATEWAY_ADDR": stack.gateway_addr,
                    "LONGSHORE_LOG_LEVEL": "WARNING",
                }
            ),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"dashboard: cannot listen on 127.0.0.1:{port}: address already in use"], (
        result.stderr
    )
    assert "Traceback" not in result.stderr + result.stdout


def test_sigterm_ends_open_event_streams_and_exits_zero(stack: RealStack) -> None:
    with dashboard_process(stack, name="dashboard-sigterm") as dash:
        token = dash.page_token()
        conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=30)
        conn.request("GET", "/api/events", headers={"X-Longshore-Token": token})
        response = conn.getresponse()
        assert response.status == 200
        assert response.readline().startswith(b"event: hello")
        dash.process.send_signal(signal.SIGTERM)
        # read() returns only once the server ends the chunked stream cleanly
        # (a dropped connection raises IncompleteRead instead).
        response.read()
        conn.close()
        assert dash.process.wait(30) == 0, dash.process.log_tail()
        assert "dashboard stopped" in dash.process.log_text()
