"""Sessions act as the person logged in, end server-side, and wrong keys are throttled.

Starlette's TestClient drives the real application in front of the fake
gateway, which checks keys and scopes like the real one and records which
key every call carried.
"""

from __future__ import annotations

from services.dashboard.auth.sessions import COOKIE_NAME
from tests.unit.dashboard.dashboard_harness import (
    form_login,
    in_process_dashboard,
    page_token_of,
    running_dashboard,
)
from tests.unit.dashboard.fake_gateway import DASHBOARD_KEY, READ_KEY, USER_KEY

WRITE_CONTROLS = ('id="create-form"', 'id="tick"', 'id="reap"', 'id="reap-preview"')


def test_every_call_of_an_api_key_session_carries_that_key() -> None:
    with in_process_dashboard() as dash:
        browser = dash.client()
        assert form_login(browser, USER_KEY).status_code == 303
        page = browser.get("/boards/default")
        token = page_token_of(page.text)
        dash.state.calls.clear()
        assert browser.get("/api/boards").status_code == 200
        assert browser.get("/api/boards/default/tasks").status_code == 200
        created = browser.post(
            "/api/tasks", json={"title": "mine"}, headers={"X-Longshore-Token": token}
        )
        assert created.status_code == 201, created.text
        assert browser.get("/api/status/detail").json()["gateway"]["scopes"] == ["read", "write"]
        assert dash.state.calls and set(dash.state.calls) == {USER_KEY}
        assert DASHBOARD_KEY not in dash.state.calls


def test_a_read_only_key_gets_a_read_only_dashboard_and_cannot_write() -> None:
    with in_process_dashboard() as dash:
        browser = dash.client()
        assert form_login(browser, READ_KEY).status_code == 303
        for path in ("/boards/default", "/dispatcher", "/sandboxes"):
            html = browser.get(path).text
            assert '<meta name="longshore-can-write" content="0">' in html, path
            assert 'id="read-only"' in html
            assert not [c for c in WRITE_CONTROLS if c in html], path
        token = page_token_of(browser.get("/boards/default").text)
        headers = {"X-Longshore-Token": token}
        dash.state.calls.clear()
        for path, body in (
            ("/api/tasks", {"title": "sneaky"}),
            ("/api/tasks/t1/move", {"status": "todo"}),
            ("/api/dispatcher/tick", {"board_id": "default"}),
            ("/api/sandboxes/reap", {}),
        ):
            refused = browser.post(path, json=body, headers=headers)
            assert refused.status_code == 403, (path, refused.text)
            data = refused.json()
            assert data["error"] == "permission_denied" and data["grpc_code"] == "PERMISSION_DENIED"
            # The gateway's own message, naming the scope and the key.
            assert "needs scope" in data["message"] and "'reader'" in data["message"]
        assert set(dash.state.calls) == {READ_KEY}
        assert dash.state.tasks == {}
        # Reads work, and the dispatcher page lists reasons without a dry run.
        plan = browser.get("/api/dispatcher?board_id=default").json()
        assert plan["preview"] is None and plan["ready"] == []


def test_a_write_key_gets_write_controls_and_admin_gets_operator_controls() -> None:
    with in_process_dashboard() as dash:
        writer = dash.client()
        form_login(writer, USER_KEY)
        board = writer.get("/boards/default").text
        assert 'id="create-form"' in board and 'id="read-only"' not in board
        assert 'id="reap"' not in writer.get("/sandboxes").text  # reaping needs admin
        admin = dash.client("203.0.113.6")
        form_login(admin, DASHBOARD_KEY)
        assert 'id="reap"' in admin.get("/sandboxes").text


def test_logout_ends_the_session_and_the_old_cookie_is_refused() -> None:
    with in_process_dashboard() as dash:
        browser = dash.client()
        form_login(browser, USER_KEY)
        old_cookie = browser.cookies[COOKIE_NAME]
        token = page_token_of(browser.get("/boards/default").text)
        assert len(dash.built.app.gate.store or ()) == 1
        out = browser.post("/logout", data={"csrf_token": token}, follow_redirects=False)
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
        assert len(dash.built.app.gate.store or ()) == 0

        replay = dash.client()
        replay.cookies.set(COOKIE_NAME, old_cookie)
        api = replay.get("/api/boards")
        assert api.status_code == 401 and api.json()["error"] == "session_ended"
        assert api.json()["login_url"] == "/login?next=/"
        assert "Max-Age=0" in api.headers["set-cookie"]
        replay.cookies.set(COOKIE_NAME, old_cookie)
        html = replay.get("/boards/default", follow_redirects=False)
        assert html.status_code == 303 and html.headers["location"].startswith("/login?next=")
        # The login page shows its form to the dead cookie (no bounce back).
        replay.cookies.set(COOKIE_NAME, old_cookie)
        assert 'name="api_key"' in replay.get("/login?next=/", follow_redirects=False).text


def test_logout_needs_the_sessions_csrf_token() -> None:
    with in_process_dashboard() as dash:
        browser = dash.client()
        form_login(browser, USER_KEY)
        refused = browser.post("/logout", data={"csrf_token": "forged"}, follow_redirects=False)
        assert refused.status_code == 403
        assert browser.get("/api/boards").status_code == 200


def test_a_rotated_key_ends_its_sessions_and_lands_on_login_once() -> None:
    with in_process_dashboard() as dash:
        first, second = dash.client(), dash.client("203.0.113.7")
        form_login(first, USER_KEY)
        form_login(second, USER_KEY)
        other = dash.client("203.0.113.8")
        form_login(other, READ_KEY)
        assert first.get("/api/boards").status_code == 200
        del dash.state.keys[USER_KEY]  # the operator rotated the key away

        ended = first.get("/api/boards", headers={"Referer": "http://dash.example/tasks/t4"})
        assert ended.status_code == 401, ended.text
        assert ended.json() == {"error": "session_ended", "login_url": "/login?next=/tasks/t4"}
        assert "Max-Age=0" in ended.headers["set-cookie"]
        assert COOKIE_NAME not in first.cookies
        # Every session of that key is gone, the other key's session is not.
        second_reply = second.get("/api/boards")
        assert second_reply.status_code == 401 and second_reply.json()["error"] == "session_ended"
        assert other.get("/api/boards").status_code == 200
        # The browser's one navigation: the login form, not another redirect.
        landing = first.get("/login?next=/tasks/t4", follow_redirects=False)
        assert landing.status_code == 200 and 'name="api_key"' in landing.text


def test_the_eleventh_wrong_login_within_a_minute_is_throttled() -> None:
    with in_process_dashboard() as dash:
        attacker = dash.client("198.51.100.9")
        for attempt in range(10):
            reply = form_login(attacker, f"wrong-{attempt}")
            assert reply.status_code == 401, (attempt, reply.text)
        throttled = form_login(attacker, "wrong-10")
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) == 60
        assert "Too many wrong API keys" in throttled.text
        # Refused before the gateway is asked, even with a right key.
        dash.state.calls.clear()
        assert form_login(attacker, USER_KEY).status_code == 429
        assert dash.state.calls == []
        # Another address is never locked out.
        assert form_login(dash.client("198.51.100.10"), USER_KEY).status_code == 303
        # The window slides: 61 s later the address may try again.
        dash.clock.now += 61
        assert form_login(attacker, USER_KEY).status_code == 303


def test_behind_a_trusted_proxy_the_throttle_counts_the_browsers_address() -> None:
    with in_process_dashboard(
        trusted_proxy_header="X-Forwarded-User",
        trusted_proxies=("10.0.0.0/8",),
        sso_api_key=READ_KEY,
    ) as dash:
        proxy = dash.client("10.0.0.2")
        for attempt in range(10):
            proxy.headers["X-Forwarded-For"] = "198.51.100.20"
            assert form_login(proxy, f"wrong-{attempt}").status_code == 401
        assert form_login(proxy, "wrong").status_code == 429
        proxy.headers["X-Forwarded-For"] = "198.51.100.21"
        assert form_login(proxy, USER_KEY).status_code == 303


def test_a_trusted_proxy_user_acts_with_the_sso_key() -> None:
    with in_process_dashboard(
        trusted_proxy_header="X-Forwarded-User",
        trusted_proxies=("10.0.0.0/8",),
        sso_api_key=READ_KEY,
    ) as dash:
        proxy = dash.client("10.0.0.2")
        proxy.headers["X-Forwarded-User"] = "alice"
        page = proxy.get("/boards/default")
        assert page.status_code == 200 and 'id="read-only"' in page.text
        dash.state.calls.clear()
        token = page_token_of(page.text)
        refused = proxy.post(
            "/api/tasks", json={"title": "x"}, headers={"X-Longshore-Token": token}
        )
        assert refused.status_code == 403
        assert set(dash.state.calls) == {READ_KEY}


def test_loopback_mode_acts_with_the_dashboards_own_key() -> None:
    with running_dashboard() as dash:
        client = dash.client
        page = client.get("/boards/default")
        assert b'<meta name="longshore-can-write" content="1">' in page.body
        client.token = page_token_of(page.body.decode())
        dash.state.calls.clear()
        assert client.post("/api/tasks", body={"title": "by the dashboard"}).status == 201
        assert client.get("/api/boards").status == 200
        assert set(dash.state.calls) == {DASHBOARD_KEY}


def test_an_event_stream_refused_for_a_rotated_key_ends_the_session() -> None:
    with in_process_dashboard() as dash:
        browser = dash.client()
        form_login(browser, USER_KEY)
        del dash.state.keys[USER_KEY]
        # Resuming (Last-Event-ID) goes straight to WatchEvents, which is refused.
        with browser.stream("GET", "/api/events", headers={"Last-Event-ID": "0"}) as stream:
            assert stream.status_code == 200
            text = "".join(stream.iter_text())
        assert '"code":"UNAUTHENTICATED"' in text
        after = browser.get("/api/boards")
        assert after.status_code == 401 and after.json()["error"] == "session_ended"


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive() -> None:
    import socket

    with (
        running_dashboard(keep_alive_seconds=1) as dash,
        socket.create_connection(("127.0.0.1", dash.client.port), timeout=15) as idle,
    ):
        assert idle.recv(1) == b""  # closed by the server, not by our timeout


def test_logging_in_again_replaces_the_browsers_session() -> None:
    with in_process_dashboard() as dash:
        browser = dash.client()
        form_login(browser, USER_KEY)
        first = browser.cookies[COOKIE_NAME]
        # The login page sends a logged-in browser on; the form posted anyway
        # (another key) starts a new session and ends the old one.
        assert browser.get("/login?next=/", follow_redirects=False).status_code == 303
        token_page = dash.client().get("/login?next=/")
        # One login cookie in the jar: the first login's may still be there
        # under the server's domain, and a second of the same name is ambiguous.
        browser.cookies.delete("longshore_login")
        browser.cookies.set("longshore_login", token_page.cookies["longshore_login"], path="/login")
        token = token_page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        again = browser.post(
            "/login",
            data={"csrf_token": token, "next": "/", "api_key": READ_KEY},
            follow_redirects=False,
        )
        assert again.status_code == 303
        assert len(dash.built.app.gate.store or ()) == 1
        stale = dash.client()
        stale.cookies.set(COOKIE_NAME, first)
        assert stale.get("/api/boards").json()["error"] == "session_ended"
        assert 'id="read-only"' in browser.get("/boards/default").text
