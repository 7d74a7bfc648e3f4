"""No env value reaches a browser; the HTTP layer's limits; bounded session and throttle state."""

from __future__ import annotations

import socket

import pytest
from longshore.gateway.v1 import gateway_service_pb2

from services.dashboard.asgi import MAX_BODY_BYTES
from services.dashboard.auth.store import SessionRecord, SessionStore
from services.dashboard.auth.throttle import LoginThrottle
from services.dashboard.convert import REDACTED, redact_env
from tests.unit.dashboard.dashboard_harness import (
    Clock,
    form_login,
    in_process_dashboard,
    page_token_of,
    running_dashboard,
)
from tests.unit.dashboard.fake_gateway import DASHBOARD_KEY, PLANTED_SECRET, READ_KEY

PAGES = ("/boards/default", "/tasks/t1", "/sandboxes", "/dispatcher", "/status", "/login")
APIS = (
    "/api/status",
    "/api/status/detail",
    "/api/boards",
    "/api/profiles",
    "/api/boards/default/tasks",
    "/api/tasks/t1",
    "/api/sandboxes",
    "/api/sandboxes/reap-preview",
    "/api/dispatcher?board_id=default",
)


@pytest.mark.parametrize("key", [DASHBOARD_KEY, READ_KEY])
def test_no_dashboard_response_carries_an_env_value(key: str) -> None:
    # The fake gateway leaks the planted secret in every profile and task env.
    with in_process_dashboard() as dash:
        admin = dash.client("203.0.113.1")
        form_login(admin, DASHBOARD_KEY)
        token = page_token_of(admin.get("/boards/default").text)
        created = admin.post(
            "/api/tasks", json={"title": "with env"}, headers={"X-Longshore-Token": token}
        )
        assert created.status_code == 201 and dash.state.tasks["t1"].env["API_TOKEN"]
        browser = dash.client()
        bodies = [created.text, form_login(browser, key).text]
        for path in PAGES + APIS:
            reply = browser.get(path, follow_redirects=False)
            assert reply.status_code < 500, (path, reply.text)
            bodies.append(reply.text)
        assert all(PLANTED_SECRET not in body for body in bodies)
        profiles = browser.get("/api/profiles").json()["profiles"]
        assert profiles[0]["sandbox_spec"]["env"] == {"TOKEN": REDACTED}


def test_redaction_reaches_every_depth_and_both_shapes() -> None:
    data = {
        "task": {"env": {"A": "secret"}, "title": "env"},
        "events": [{"payload": {"env": {"B": "secret"}}}],
        "argv": {"env": ["C=secret", "D"]},
    }
    assert redact_env(data) == {
        "task": {"env": {"A": REDACTED}, "title": "env"},
        "events": [{"payload": {"env": {"B": REDACTED}}}],
        "argv": {"env": [f"C={REDACTED}", "D"]},
    }


def test_status_detail_says_why_a_backend_is_not_serving() -> None:
    with in_process_dashboard() as dash:
        dash.state.extra_backends.append(
            gateway_service_pb2.BackendStatus(
                name="sandbox-engine",
                health=gateway_service_pb2.BACKEND_HEALTH_NOT_SERVING,
                detail="docker engine unreachable: connection refused",
            )
        )
        browser = dash.client()
        form_login(browser, READ_KEY)
        backends = browser.get("/api/status/detail").json()["gateway"]["backends"]
        (engine,) = [b for b in backends if b["name"] == "sandbox-engine"]
        assert engine["health"] == "not_serving"
        assert engine["detail"] == "docker engine unreachable: connection refused"


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, read the whole answer (the server closes or answers once)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def test_http_limits_on_the_real_server() -> None:
    with running_dashboard() as dash:
        port = dash.client.port
        host = f"Host: 127.0.0.1:{port}\r\n"
        declared = f"Content-Length: {MAX_BODY_BYTES + 1}\r\n"
        too_long = raw_exchange(port, f"POST /api/tasks HTTP/1.1\r\n{host}{declared}\r\n".encode())
        assert too_long.startswith(b"HTTP/1.1 413"), too_long[:200]
        negative = raw_exchange(
            port, f"POST /api/tasks HTTP/1.1\r\n{host}Content-Length: -1\r\n\r\n".encode()
        )
        assert negative.startswith(b"HTTP/1.1 400"), negative[:200]
        chunk = b"x" * 65536
        chunked = f"POST /api/tasks HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n".encode()
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
        streamed = raw_exchange(port, chunked + body)
        assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]
        huge_header = raw_exchange(
            port, f"GET /api/status HTTP/1.1\r\n{host}X-Big: {'a' * 20000}\r\n\r\n".encode()
        )
        assert huge_header.startswith(b"HTTP/1.1 431"), huge_header[:200]
        # A small chunked body is read whole (the stdlib server could not).
        empty_chunked = f"{host}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ok = raw_exchange(port, f"GET /api/status HTTP/1.1\r\n{empty_chunked}".encode())
        assert ok.startswith(b"HTTP/1.1 200"), ok[:200]


def record(session_id: str, now: float, key: str = "k") -> SessionRecord:
    return SessionRecord(session_id, "s", "api_key", key, frozenset({"read"}), now, now)


def test_session_store_is_bounded_and_expires() -> None:
    clock = Clock(100.0)
    store = SessionStore(idle_seconds=10, max_lifetime_seconds=50, clock=clock, max_sessions=3)
    for n in range(3):
        store.put(record(f"s{n}", clock.now))
    assert store.get("s0") is not None  # s0 is now the most recently used
    store.put(record("s3", clock.now))
    assert len(store) == 3 and store.get("s1") is None and store.get("s0") is not None
    clock.now += 11
    assert store.get("s0") is None  # idle too long
    store.put(record("fresh", clock.now))
    for _ in range(5):
        clock.now += 9
        assert store.get("fresh") is not None  # used: stays, up to its lifetime
    clock.now += 9
    assert store.get("fresh") is None  # 54 s after login > 50 s lifetime
    store.put(record("a", clock.now, key="rotated"))
    store.put(record("b", clock.now, key="rotated"))
    assert store.delete_key("rotated") == 2 and len(store) <= 1


def test_login_throttle_is_per_address_and_bounded() -> None:
    clock = Clock(0.0)
    throttle = LoginThrottle(clock=clock, limit=3, window=60, max_addresses=2)
    for _ in range(3):
        assert throttle.retry_after("a") == 0
        throttle.failed("a")
    assert throttle.retry_after("a") == 60
    assert throttle.retry_after("b") == 0
    clock.now = 30
    assert throttle.retry_after("a") == 30
    throttle.failed("b")
    throttle.failed("c")  # a third address evicts the least recently failing
    assert len(throttle) == 2
    clock.now = 61
    assert throttle.retry_after("a") == 0


def test_the_listening_socket_says_tcp_so_responses_are_not_held_by_nagle() -> None:
    from services.dashboard.listener import ListenError, bind

    sock = bind("127.0.0.1", 0)
    try:
        # asyncio turns TCP_NODELAY on only for sockets created with IPPROTO_TCP;
        # without it each response waited ~40 ms for the client's delayed ACK.
        assert sock.proto == socket.IPPROTO_TCP
        with pytest.raises(ListenError, match=r"cannot listen on 127\.0\.0\.1:\d+: address"):
            bind("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()


def test_a_body_that_does_not_arrive_in_time_is_408(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.dashboard import asgi

    monkeypatch.setattr(asgi, "BODY_TIMEOUT_SECONDS", 1.0)
    with running_dashboard() as dash:
        port = dash.client.port
        head = f"POST /api/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 10\r\n\r\n"
        slow = raw_exchange(port, head.encode() + b"{}")  # 2 of the 10 bytes, then nothing
        assert slow.startswith(b"HTTP/1.1 408"), slow[:200]
