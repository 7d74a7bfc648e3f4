"""The dashboard's HTTP API end to end against a gateway-shaped fake.

Real sockets, the real stdlib server and the real generated gRPC stubs; only
the backend is a fake (tests/integration/dashboard runs the real stack).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Callable
from typing import Any

from services.dashboard.auth.sessions import COOKIE_NAME
from tests.unit.dashboard.dashboard_harness import Client, running_dashboard
from tests.unit.dashboard.fake_gateway import USER_KEY

SECRET = "x" * 40


def page_token(html: bytes) -> str:
    match = re.search(rb'name="longshore-token" content="([^"]*)"', html)
    assert match is not None
    return match.group(1).decode()


def test_loopback_page_holds_the_token_and_the_api_needs_it() -> None:
    with running_dashboard() as dash:
        client = dash.client
        assert client.get("/").status == 303
        page = client.get("/boards/default")
        assert page.status == 200
        assert "default-src 'self'" in (page.header("Content-Security-Policy") or "")
        token = page_token(page.body)
        assert len(token) >= 32
        denied = client.get("/api/boards")
        assert denied.status == 401
        assert denied.json()["error"] == "unauthenticated"
        client.token = token
        assert client.get("/api/boards").json()["boards"][0]["board_id"] == "default"
        # /login in loopback mode sends the page on: one navigation, then a fresh token.
        login = client.get("/login?next=/tasks/t1")
        assert (login.status, login.header("Location")) == (303, "/tasks/t1")


def test_public_status_says_nothing_secret() -> None:
    with running_dashboard() as dash:
        body = dash.client.get("/api/status").json()
        assert body == {
            "version": body["version"],
            "gateway_reachable": True,
            "auth_required": False,
            "auth_mode": "loopback",
        }


def test_board_api_create_move_assign_block_unblock() -> None:
    with running_dashboard() as dash:
        client = dash.client
        client.token = page_token(client.get("/boards/default").body)
        created = client.post("/api/tasks", body={"title": "Build it", "command": "echo hi"})
        assert created.status == 201, created.body
        task = created.json()["task"]
        assert task["status"] == "ready"
        assert task["command"] == ["sh", "-c", "echo hi"]
        task_id = task["task_id"]

        board = client.get("/api/boards/default/tasks").json()
        assert board["columns"][0] == "triage"
        (listed,) = board["tasks"]
        assert listed["readiness"]["message"] == "no assignee and no default assignee"
        assert listed["moves"] == ["todo", "blocked", "archived"]

        moved = client.post(f"/api/tasks/{task_id}/move", body={"status": "todo"})
        assert moved.json()["task"]["status"] == "todo"
        refused = client.post(f"/api/tasks/{task_id}/move", body={"status": "done"})
        assert refused.status == 409
        assert refused.json()["grpc_code"] == "FAILED_PRECONDITION"
        bad = client.post(f"/api/tasks/{task_id}/move", body={"status": "nonsense"})
        assert bad.status == 400

        assigned = client.post(f"/api/tasks/{task_id}/assign", body={"assignee": "builder"})
        assert assigned.json()["task"]["assignee"] == "builder"
        assert client.post(f"/api/tasks/{task_id}/block", body={}).status == 400
        blocked = client.post(f"/api/tasks/{task_id}/block", body={"reason": "waiting on ops"})
        assert blocked.json()["task"]["blocked_reason"] == "waiting on ops"
        unblocked = client.post(f"/api/tasks/{task_id}/unblock", body={})
        assert unblocked.json()["task"]["status"] == "ready"

        detail = client.get(f"/api/tasks/{task_id}").json()
        kinds = [event["kind"] for event in detail["events"]]
        assert kinds == ["created", "moved", "assigned", "blocked", "unblocked"]
        assert detail["last_event_id"] == 5
        assert client.get("/api/tasks/nope").status == 404


def read_sse(
    port: int,
    path: str,
    token: str,
    want: int,
    headers: dict[str, str] | None = None,
    seen: Callable[[tuple[str, str, Any]], None] | None = None,
) -> list[tuple[str, str, Any]]:
    """Read ``want`` events (name, id, data) from an SSE endpoint; ``seen`` hears each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"X-Longshore-Token": token, **(headers or {})})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    events: list[tuple[str, str, Any]] = []
    name, event_id = "", ""
    while len(events) < want:
        line = response.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            events.append((name, event_id, json.loads(line[6:])))
            if seen is not None:
                seen(events[-1])
            name, event_id = "", ""
    conn.close()
    return events


def test_events_stream_live_and_resume_from_last_event_id() -> None:
    with running_dashboard() as dash:
        client = dash.client
        client.token = page_token(client.get("/boards/default").body)
        client.post("/api/tasks", body={"title": "before"})
        received: list[Any] = []

        def listen() -> None:
            received.extend(read_sse(client.port, "/api/events?board_id=default", client.token, 2))

        thread = threading.Thread(target=listen)
        thread.start()
        # The hello says where the stream resumes: after the existing event.
        while not dash.built.app.hub.__len__():
            threading.Event().wait(0.01)
        client.post("/api/tasks", body={"title": "after"})
        thread.join(10)
        hello, live = received
        assert hello[0] == "hello" and hello[2] == {"since": 1}
        assert live[0] == "task" and live[1] == "2" and live[2]["kind"] == "created"

        resumed = read_sse(client.port, "/api/events", client.token, 2, {"Last-Event-ID": "0"})
        assert [e[1] for e in resumed] == ["0", "1"]


def test_run_output_follows_until_the_run_ends() -> None:
    with running_dashboard() as dash:
        client = dash.client
        client.token = page_token(client.get("/boards/default").body)
        task_id = client.post("/api/tasks", body={"title": "t"}).json()["task"]["task_id"]
        from longshore.kanban.v1 import run_pb2

        dash.state.runs[task_id] = [run_pb2.TaskRun(run_id="r1", task_id=task_id)]
        dash.state.append_output("r1", "héllo ".encode()[:2])  # split a UTF-8 character
        received: list[Any] = []
        first = threading.Event()
        thread = threading.Thread(
            target=lambda: received.extend(
                read_sse(
                    client.port,
                    f"/api/tasks/{task_id}/output",
                    client.token,
                    3,
                    seen=lambda event: first.set(),
                )
            )
        )
        thread.start()
        # The rest is written only once the first half reached the browser, so
        # the split character really crosses two messages.
        assert first.wait(10)
        dash.state.append_output("r1", "héllo world\n".encode()[2:], done=True)
        thread.join(10)
        texts = "".join(data.get("text", "") for name, _, data in received if name == "output")
        assert texts == "héllo world\n"
        assert received[-1][0] == "end"


def test_output_of_a_task_without_runs_is_an_error_event() -> None:
    with running_dashboard() as dash:
        client = dash.client
        client.token = page_token(client.get("/boards/default").body)
        task_id = client.post("/api/tasks", body={"title": "t"}).json()["task"]["task_id"]
        (event,) = read_sse(client.port, f"/api/tasks/{task_id}/output", client.token, 1)
        assert event[0] == "error" and event[2]["code"] == "NOT_FOUND"


def test_sandboxes_dispatcher_and_status_detail() -> None:
    with running_dashboard() as dash:
        client = dash.client
        client.token = page_token(client.get("/sandboxes").body)
        (sandbox,) = client.get("/api/sandboxes").json()["sandboxes"]
        assert sandbox["state"] == "running" and sandbox["task_id"] == "t1"
        preview = client.get("/api/sandboxes/reap-preview").json()["report"]
        assert preview["dry_run"] is True and preview["spared"][0]["reason"] == "running"
        assert client.post("/api/sandboxes/reap", body={}).json()["report"]["dry_run"] is False

        client.post("/api/tasks", body={"title": "r"})
        plan = client.get("/api/dispatcher?board_id=default").json()
        assert plan["preview"]["skipped_unassigned"] == ["t1"]
        assert plan["last_tick"] is None
        tick = client.post("/api/dispatcher/tick", body={"board_id": "default"}).json()
        assert tick["last_tick"]["result"]["dry_run"] is False
        assert client.get("/api/dispatcher").json()["last_tick"]["by"] == "loopback"

        status = client.get("/api/status/detail").json()
        assert status["gateway"]["version"] == "9.9.9"
        assert [b["health"] for b in status["gateway"]["backends"]] == ["serving", "unreachable"]
        assert status["auth"] == {
            "mode": "loopback",
            "methods": [],
            "user": "loopback",
            "via": "loopback",
        }


def test_gateway_refusing_the_dashboard_key_is_502_not_401() -> None:
    # A 401 would send the browser to a login page that cannot fix the dashboard's key.
    with running_dashboard(gateway_key="wrong") as dash:
        client = dash.client
        client.token = page_token(client.get("/boards/default").body)
        reply = client.get("/api/boards")
        assert reply.status == 502
        assert reply.json()["error"] == "gateway_rejected_dashboard_key"
        status = client.get("/api/status").json()
        assert status["gateway_reachable"] is True  # it answered; the key is the problem


def test_unreachable_gateway_is_503_and_reported_by_status() -> None:
    from tests.support.net import free_port

    with running_dashboard(gateway_address=f"127.0.0.1:{free_port()}") as dash:
        client = dash.client
        client.token = page_token(client.get("/boards/default").body)
        reply = client.get("/api/boards")
        assert reply.status == 503 and reply.json()["error"] == "gateway_unavailable"
        assert client.get("/api/status").json()["gateway_reachable"] is False
        detail = client.get("/api/status/detail").json()
        assert detail["gateway"]["reachable"] is False
        assert detail["gateway"]["error"].startswith("UNAVAILABLE")


def test_static_assets_and_traversal() -> None:
    with running_dashboard(require_login=True, session_secret=SECRET) as dash:
        client = dash.client
        js = client.get("/assets/app.js")
        assert js.status == 200 and js.header(
            "Content-Type",
        ).startswith("text/javascript")  # type: ignore[union-attr]
        # ".." is never public, so it meets the gate (and could not escape static/ anyway).
        assert client.get("/assets/../settings.py").status == 303
        assert client.get("/assets/nope.js").status == 404
        # /assetsleak is not under the public prefix: a gated HTML route -> login.
        assert client.get("/assetsleak").status == 303


def login(client: Client, key: str, next_target: str = "/boards/default") -> Any:
    form_page = client.get(f"/login?next={next_target}")
    assert form_page.status == 200
    match = re.search(rb'name="csrf_token" value="([^"]+)"', form_page.body)
    assert match is not None
    return client.post(
        "/login",
        form={"csrf_token": match.group(1).decode(), "next": next_target, "api_key": key},
    )


def test_gated_api_key_login_end_to_end() -> None:
    with running_dashboard(require_login=True, session_secret=SECRET) as dash:
        client = dash.client
        first = client.get("/boards/default")
        assert (first.status, first.header("Location")) == (303, "/login?next=/boards/default")
        api = client.get("/api/boards")
        assert api.status == 401 and api.json()["error"] == "unauthenticated"

        refused = login(client, "not-a-key")
        assert refused.status == 401 and b"refused that API key" in refused.body
        assert COOKIE_NAME not in client.cookies

        ok = login(client, USER_KEY)
        assert (ok.status, ok.header("Location")) == (303, "/boards/default")
        (cookie,) = [c for c in ok.cookies() if c.startswith(COOKIE_NAME)]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        page = client.get("/boards/default")
        assert page.status == 200
        csrf = page_token(page.body)
        assert client.get("/api/boards").status == 200
        # CSRF: a state change without the page's token is refused.
        assert client.post("/api/tasks", body={"title": "x"}).status == 403
        client.token = csrf
        assert client.post("/api/tasks", body={"title": "x"}).status == 201

        logout = client.post("/logout", form={"csrf_token": csrf})
        assert logout.status == 303 and COOKIE_NAME not in client.cookies
        assert client.get("/api/boards").status == 401


def test_login_form_without_its_cookie_is_refused() -> None:
    with running_dashboard(require_login=True, session_secret=SECRET) as dash:
        reply = dash.client.post(
            "/login", form={"csrf_token": "forged", "next": "/", "api_key": USER_KEY}
        )
        assert reply.status == 403 and COOKIE_NAME not in dash.client.cookies


def test_login_next_cannot_leave_the_site() -> None:
    with running_dashboard(require_login=True, session_secret=SECRET) as dash:
        reply = login(dash.client, USER_KEY, "//evil.example/x")
        assert reply.header("Location") == "/"


def test_expired_session_api_answer_clears_the_cookie() -> None:
    with running_dashboard(
        require_login=True, session_secret=SECRET, session_ttl_seconds=1
    ) as dash:
        client = dash.client
        assert login(client, USER_KEY).status == 303
        sessions = dash.built.app.gate.sessions
        assert sessions is not None
        # Re-sign the same session with an expiry in the past.
        from dataclasses import replace

        session = sessions.decode(client.cookies[COOKIE_NAME]).session
        assert session is not None
        client.cookies[COOKIE_NAME] = sessions.encode(replace(session, expires=0))
        reply = client.get(
            "/api/boards", headers={"Referer": f"http://127.0.0.1:{client.port}/tasks/t9"}
        )
        assert reply.status == 401
        assert reply.json() == {"error": "session_expired", "login_url": "/login?next=/tasks/t9"}
        assert any("Max-Age=0" in c for c in reply.cookies())
        assert COOKIE_NAME not in client.cookies


def test_a_browser_leaving_cancels_the_upstream_stream() -> None:
    import time

    with running_dashboard() as dash:
        client = dash.client
        client.token = page_token(client.get("/boards/default").body)
        conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
        conn.request("GET", "/api/events", headers={"X-Longshore-Token": client.token})
        response = conn.getresponse()
        assert response.readline().startswith(b"event: hello")
        hub = dash.built.app.hub
        assert len(hub) == 1
        conn.sock.shutdown(2)  # type: ignore[union-attr]
        conn.close()
        deadline = time.monotonic() + 10
        while len(hub) and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        assert len(hub) == 0, "the WatchEvents call outlived the browser"
