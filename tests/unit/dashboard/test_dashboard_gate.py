"""The auth gate's whole matrix: bind x mode x path x credential state.

Every row is one request and the answer the gate must give. Rows are
explicit on purpose: the table is the specification.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

import pytest

from services.dashboard.auth.gate import Gate, GateConfig
from services.dashboard.auth.modes import (
    GateConfigError,
    LoginMethods,
    Mode,
    check_login_methods,
    is_truthy,
    resolve_mode,
)
from services.dashboard.auth.proxy import ProxyAuth
from services.dashboard.auth.sessions import COOKIE_NAME, SessionCodec
from services.dashboard.auth.store import SessionRecord, SessionStore
from services.dashboard.web import Request

PORT = 8080
SECRET = "s" * 40
PAGE_TOKEN = "page-token-123"
TTL = 3600.0
NOW = 1_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def codec(clock: Clock) -> SessionCodec:
    return SessionCodec(SECRET, ttl_seconds=TTL, max_lifetime_seconds=86400, clock=clock)


@cache
def cookie_for(state: str) -> str:
    """A session cookie in one state, as the browser would send it."""
    if state == "tampered":
        good = cookie_for("valid")
        return good[:-2] + ("00" if not good.endswith("00") else "11")
    if state == "foreign":  # signed with another secret
        other = SessionCodec(
            "o" * 40, ttl_seconds=TTL, max_lifetime_seconds=86400, clock=Clock(NOW)
        )
        return other.encode(other.issue("mallory", "api_key"))
    if state == "garbage":
        return "not-a-cookie"
    if state == "ended":  # signed by us, but the server no longer holds the session
        c = codec(Clock(NOW))
        return c.encode(c.issue("apikey:gone", "api_key"))
    issued_at = {"valid": NOW, "expired": NOW - 2 * TTL, "stale": NOW - 0.75 * TTL}[state]
    c = codec(Clock(issued_at))
    return c.encode(c.issue("apikey:abcd", "api_key"))


def make_store() -> SessionStore:
    """The server-side sessions behind the live cookies (not ``ended``)."""
    store = SessionStore(idle_seconds=TTL * 10, max_lifetime_seconds=86400, clock=Clock(NOW))
    for state in ("valid", "stale", "expired"):
        session = codec(Clock(NOW)).decode(cookie_for(state)).session
        assert session is not None
        store.put(
            SessionRecord(
                session_id=session.session_id,
                subject=session.subject,
                method=session.method,
                api_key=f"key-{state}",
                scopes=frozenset({"read"}),
                auth_time=NOW,
                last_seen=NOW,
            )
        )
    return store


def make_gate(mode: Mode, *, proxy: bool = False, sessions: bool = True) -> Gate:
    config = GateConfig(
        mode=mode,
        port=PORT,
        bind_host="127.0.0.1" if mode is Mode.LOOPBACK else "0.0.0.0",
        methods=LoginMethods(api_key=sessions, oidc=False, proxy=proxy),
        page_token=PAGE_TOKEN,
        sso_api_key="sso-key",
    )
    return Gate(
        config,
        sessions=codec(Clock(NOW)) if sessions else None,
        store=make_store() if sessions else None,
        proxy=ProxyAuth("X-Forwarded-User", ["10.0.0.0/8"]) if proxy else None,
    )


@dataclass(frozen=True)
class Row:
    mode: Mode
    method: str
    path: str
    cred: str  # none | token | badtoken | cookie:<state> | proxy:<peer>
    expect: str  # allow | 401:<error> | 303 | 403:<error>
    host: str = f"127.0.0.1:{PORT}"
    cleared: bool = False  # a dead cookie must be cleared
    refreshed: bool = False


L, G, INS = Mode.LOOPBACK, Mode.GATED, Mode.INSECURE
LOOP_HOST = f"127.0.0.1:{PORT}"

ROWS = [
    # --- LOOPBACK: public list -------------------------------------------------
    Row(L, "GET", "/api/status", "none", "allow"),
    Row(L, "GET", "/assets/app.js", "none", "allow"),
    Row(L, "GET", "/assets/", "none", "allow"),
    Row(L, "GET", "/assetsleak", "none", "allow"),  # HTML route: no login in loopback
    Row(L, "GET", "/api/status/", "none", "401:unauthenticated"),
    Row(L, "GET", "/api/statusx", "none", "401:unauthenticated"),
    Row(L, "GET", "/api/status/../boards", "none", "401:unauthenticated"),
    # --- LOOPBACK: HTML opens without login, API needs the per-start token ----
    Row(L, "GET", "/", "none", "allow"),
    Row(L, "GET", "/tasks/t1", "none", "allow"),
    Row(L, "GET", "/api/boards", "none", "401:unauthenticated"),
    Row(L, "GET", "/api/boards", "badtoken", "401:unauthenticated"),
    Row(L, "GET", "/api/boards", "token", "allow"),
    Row(L, "GET", "/api/boards", "cookie:valid", "401:unauthenticated"),
    Row(L, "POST", "/api/tasks", "token", "allow"),
    Row(L, "POST", "/api/tasks", "none", "401:unauthenticated"),
    Row(L, "POST", "/api/tasks", "badtoken", "401:unauthenticated"),
    # --- LOOPBACK: Host header (DNS rebinding) --------------------------------
    Row(L, "GET", "/", "none", "allow", host=f"localhost:{PORT}"),
    Row(L, "GET", "/", "none", "allow", host=f"[::1]:{PORT}"),
    Row(L, "GET", "/api/boards", "token", "allow", host=f"LOCALHOST:{PORT}"),
    Row(L, "GET", "/", "none", "403:host_not_allowed", host=f"evil.example:{PORT}"),
    Row(L, "GET", "/api/boards", "token", "403:host_not_allowed", host=f"evil.example:{PORT}"),
    Row(L, "GET", "/api/status", "none", "403:host_not_allowed", host="evil.example"),
    Row(L, "GET", "/", "none", "403:host_not_allowed", host="127.0.0.1:9999"),
    Row(L, "GET", "/", "none", "403:host_not_allowed", host=""),
    # --- GATED: public list -----------------------------------------------------
    Row(G, "GET", "/api/status", "none", "allow"),
    Row(G, "GET", "/assets/app.css", "none", "allow"),
    Row(G, "GET", "/login", "none", "allow"),
    Row(G, "POST", "/login", "none", "allow"),  # the login view checks its own form token
    Row(G, "GET", "/auth/oidc/callback", "none", "allow"),
    Row(G, "GET", "/assetsleak", "none", "303"),
    Row(G, "GET", "/assets", "none", "303"),
    Row(G, "GET", "/api/status/", "none", "401:unauthenticated"),
    Row(G, "GET", "/api/statusx", "none", "401:unauthenticated"),
    Row(G, "GET", "/loginx", "none", "303"),
    # --- GATED: credential states on the API -----------------------------------
    Row(G, "GET", "/api/boards", "none", "401:unauthenticated"),
    Row(G, "GET", "/api/boards", "token", "401:unauthenticated"),  # page token means nothing here
    Row(G, "GET", "/api/boards", "cookie:valid", "allow"),
    Row(G, "GET", "/api/boards", "cookie:stale", "allow", refreshed=True),
    Row(G, "GET", "/api/boards", "cookie:expired", "401:session_expired", cleared=True),
    Row(G, "GET", "/api/boards", "cookie:tampered", "401:unauthenticated", cleared=True),
    Row(G, "GET", "/api/boards", "cookie:foreign", "401:unauthenticated", cleared=True),
    Row(G, "GET", "/api/boards", "cookie:garbage", "401:unauthenticated", cleared=True),
    Row(G, "GET", "/api/boards", "cookie:ended", "401:session_ended", cleared=True),
    Row(G, "POST", "/api/tasks", "cookie:ended+csrf", "401:session_ended", cleared=True),
    # --- GATED: credential states on HTML routes -------------------------------
    Row(G, "GET", "/", "none", "303"),
    Row(G, "GET", "/tasks/t1", "cookie:valid", "allow"),
    Row(G, "GET", "/tasks/t1", "cookie:expired", "303", cleared=True),
    Row(G, "GET", "/tasks/t1", "cookie:tampered", "303", cleared=True),
    Row(G, "GET", "/tasks/t1", "cookie:ended", "303", cleared=True),
    # --- GATED: CSRF on state-changing requests ---------------------------------
    Row(G, "POST", "/api/tasks", "cookie:valid", "403:csrf"),
    Row(G, "POST", "/api/tasks", "cookie:valid+csrf", "allow"),
    Row(G, "DELETE", "/api/tasks/t1", "cookie:valid", "403:csrf"),
    Row(G, "POST", "/api/tasks", "cookie:expired+csrf", "401:session_expired", cleared=True),
    # --- GATED: host is not checked (cookies are host-bound) --------------------
    Row(G, "GET", "/api/boards", "cookie:valid", "allow", host="dash.example.com"),
    # --- INSECURE: the gate is off, CSRF still applies by Origin ----------------
    Row(INS, "GET", "/api/boards", "none", "allow", host="anything.example"),
    Row(INS, "GET", "/", "none", "allow", host="anything.example"),
    Row(INS, "POST", "/api/tasks", "none", "allow"),
    Row(INS, "POST", "/api/tasks", "origin:evil", "403:csrf"),
    Row(INS, "POST", "/api/tasks", "origin:self", "allow"),
]

PROXY_ROWS = [
    Row(G, "GET", "/api/boards", "proxy:10.1.2.3", "allow"),
    Row(G, "GET", "/", "proxy:10.1.2.3", "allow"),
    Row(G, "GET", "/api/boards", "proxy:192.168.1.5", "401:unauthenticated"),
    Row(G, "GET", "/", "proxy:192.168.1.5", "303"),
    Row(G, "GET", "/api/boards", "proxy:::ffff:10.9.9.9", "allow"),
    Row(G, "POST", "/api/tasks", "proxy:10.1.2.3", "403:csrf"),
    Row(G, "GET", "/api/boards", "proxyempty:10.1.2.3", "401:unauthenticated"),
    Row(G, "GET", "/api/boards", "cookie:valid", "allow"),  # cookies still work alongside
]


def build_request(row: Row, gate: Gate) -> Request:
    headers = {"Host": row.host} if row.host else {}
    peer = "127.0.0.1"
    for part in row.cred.split("+"):
        if part == "token":
            headers["X-Longshore-Token"] = PAGE_TOKEN
        elif part == "badtoken":
            headers["X-Longshore-Token"] = "nope"
        elif part.startswith("cookie:"):
            headers["Cookie"] = f"{COOKIE_NAME}={cookie_for(part.split(':', 1)[1])}"
        elif part == "csrf":
            assert gate.sessions is not None
            session = gate.sessions.decode(cookie_for("valid")).session
            assert session is not None
            headers["X-Longshore-Token"] = gate.sessions.csrf_token(session)
        elif part.startswith("proxy:") or part.startswith("proxyempty:"):
            kind, peer = part.split(":", 1)
            headers["X-Forwarded-User"] = "alice" if kind == "proxy" else ""
        elif part == "origin:evil":
            headers["Origin"] = "https://evil.example"
        elif part == "origin:self":
            headers["Origin"] = f"http://{row.host}"
    return Request.build(row.method, row.path, headers, peer=peer)


def run_row(row: Row, gate: Gate) -> None:
    verdict = gate.check(build_request(row, gate))
    if row.expect == "allow":
        assert verdict.denial is None, verdict.denial and verdict.denial.body
        assert verdict.identity is not None
        refreshed = any(c.startswith(f"{COOKIE_NAME}=") for c in verdict.cookies)
        assert refreshed == row.refreshed
        return
    denial = verdict.denial
    assert denial is not None, f"expected {row.expect}, got allowed"
    cookies = [value for name, value in denial.headers if name == "Set-Cookie"]
    assert any("Max-Age=0" in c for c in cookies) == row.cleared, cookies
    if row.expect == "303":
        assert denial.status == 303
        location = dict(denial.headers)["Location"]
        assert location.startswith("/login?next=")
        return
    status, error = row.expect.split(":", 1)
    assert denial.status == int(status)
    body = json.loads(denial.body)
    assert body["error"] == error
    if status == "401":
        assert body["login_url"].startswith("/login?next=")


@pytest.mark.parametrize(
    "row", ROWS, ids=lambda r: f"{r.mode.value}-{r.method}-{r.path}-{r.cred}-{r.host}"
)
def test_gate_matrix(row: Row) -> None:
    run_row(row, make_gate(row.mode))


@pytest.mark.parametrize("row", PROXY_ROWS, ids=lambda r: f"{r.method}-{r.path}-{r.cred}")
def test_gate_matrix_with_trusted_proxy(row: Row) -> None:
    run_row(row, make_gate(row.mode, proxy=True))


def test_gated_without_session_codec_refuses_cookies() -> None:
    gate = make_gate(G, proxy=True, sessions=False)
    row = Row(G, "GET", "/api/boards", "cookie:valid", "401:unauthenticated")
    run_row(row, gate)


def test_identities_carry_the_key_their_calls_use() -> None:
    gate = make_gate(G, proxy=True)
    cookie = f"{COOKIE_NAME}={cookie_for('valid')}"
    session = gate.check(Request.build("GET", "/api/boards", {"Cookie": cookie})).identity
    assert session is not None
    assert (session.api_key, session.scopes) == ("key-valid", frozenset({"read"}))
    assert session.ends_with_its_key and "key-valid" not in repr(session)
    proxied = Request.build("GET", "/", {"X-Forwarded-User": "alice"}, peer="10.1.2.3")
    identity = gate.check(proxied).identity
    assert identity is not None and identity.api_key == "sso-key" and identity.scopes is None
    assert not identity.ends_with_its_key
    loopback = make_gate(L).check(Request.build("GET", "/", {"Host": LOOP_HOST})).identity
    assert loopback is not None and loopback.api_key == ""  # the dashboard's own key


def test_behind_a_trusted_proxy_the_client_address_is_the_last_forwarded_hop() -> None:
    gate = make_gate(G, proxy=True)
    via = {"X-Forwarded-For": "203.0.113.1, 198.51.100.7"}
    assert gate.client_address(Request.build("GET", "/", via, peer="10.0.0.9")) == "198.51.100.7"
    # Anyone else's forwarding header is ignored.
    assert gate.client_address(Request.build("GET", "/", via, peer="192.0.2.4")) == "192.0.2.4"


def test_loopback_refuses_a_reverse_proxy_in_front() -> None:
    gate = make_gate(L)
    request = Request.build("GET", "/", {"Host": LOOP_HOST, "X-Forwarded-For": "203.0.113.9"})
    denial = gate.check(request).denial
    assert denial is not None and denial.status == 403
    assert json.loads(denial.body)["error"] == "proxied_loopback"


def test_api_401_login_url_returns_to_the_calling_page() -> None:
    gate = make_gate(G)
    request = Request.build(
        "GET",
        "/api/boards",
        {"Host": "dash:8080", "Referer": "http://dash:8080/tasks/t1?x=1"},
    )
    denial = gate.check(request).denial
    assert denial is not None
    assert json.loads(denial.body)["login_url"] == "/login?next=/tasks/t1%3Fx%3D1"


def test_html_redirect_keeps_the_query() -> None:
    gate = make_gate(G)
    denial = gate.check(Request.build("GET", "/boards/main?profile=builder", {"Host": "d"})).denial
    assert denial is not None
    assert dict(denial.headers)["Location"] == "/login?next=/boards/main%3Fprofile%3Dbuilder"


def test_refreshed_cookie_is_httponly_samesite_and_later() -> None:
    gate = make_gate(G)
    verdict = gate.check(
        Request.build(
            "GET", "/api/boards", {"Host": "d", "Cookie": f"{COOKIE_NAME}={cookie_for('stale')}"}
        )
    )
    (cookie,) = verdict.cookies
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=86400" in cookie
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert gate.sessions is not None
    session = gate.sessions.decode(value).session
    assert session is not None and session.expires == NOW + TTL


def test_secure_flag_follows_a_trusted_proxy_scheme() -> None:
    gate = make_gate(G, proxy=True)
    trusted = Request.build("GET", "/", {"X-Forwarded-Proto": "https"}, peer="10.0.0.1")
    untrusted = Request.build("GET", "/", {"X-Forwarded-Proto": "https"}, peer="192.0.2.1")
    assert "Secure" in gate.session_cookie(trusted, "v")
    assert "Secure" not in gate.session_cookie(untrusted, "v")


# --- mode resolution and strict truthiness ---------------------------------

TRUTHINESS = [
    ("1", True),
    ("true", True),
    ("TRUE", True),
    ("True", True),
    ("yes", True),
    ("YeS", True),
    ("0", False),
    ("false", False),
    ("no", False),
    ("", False),
    ("on", False),
    ("ture", False),
    ("y", False),
    ("2", False),
    (" 1", False),
    ("1 ", False),
    ("yes!", False),
    ("enabled", False),
]


@pytest.mark.parametrize(("raw", "expected"), TRUTHINESS)
def test_insecure_strict_truthiness(raw: str, expected: bool) -> None:
    assert is_truthy(raw) is expected


MODES = [
    # bind host, insecure, require_login, mode
    ("127.0.0.1", "", False, L),
    ("localhost", "", False, L),
    ("::1", "", False, L),
    ("127.0.0.2", "", False, L),
    ("127.0.0.1", "0", False, L),
    ("127.0.0.1", "ture", False, L),
    ("127.0.0.1", "", True, G),
    ("0.0.0.0", "", False, G),
    ("::", "", False, G),
    ("", "", False, G),
    ("192.168.1.10", "", False, G),
    ("dashboard.example.com", "", False, G),
    ("0.0.0.0", "0", False, G),
    ("0.0.0.0", "no", False, G),
    ("0.0.0.0", "1", False, INS),
    ("0.0.0.0", "Yes", False, INS),
    ("127.0.0.1", "true", False, INS),
    ("127.0.0.1", "TRUE", True, INS),
]


@pytest.mark.parametrize(("host", "insecure", "require_login", "mode"), MODES)
def test_mode_resolution(host: str, insecure: str, require_login: bool, mode: Mode) -> None:
    assert resolve_mode(listen_host=host, insecure=insecure, require_login=require_login) is mode


def methods(mode: Mode, **overrides: object) -> LoginMethods:
    kwargs: dict[str, object] = {
        "mode": mode,
        "listen": "0.0.0.0:8080",
        "session_secret": "",
        "api_key_login": True,
        "oidc_issuer": "",
        "oidc_client_id": "",
        "proxy_header": "",
        "trusted_proxies": (),
    }
    kwargs.update(overrides)
    return check_login_methods(**kwargs)  # type: ignore[arg-type]


STARTUP_REFUSALS = [
    (G, {}, "no login method is configured"),
    (G, {"session_secret": SECRET, "api_key_login": False}, "no login method"),
    (G, {"session_secret": "short"}, "too short"),
    (L, {"session_secret": "short"}, "too short"),
    (G, {"oidc_issuer": "http://idp"}, "both"),
    (G, {"oidc_issuer": "http://idp", "oidc_client_id": "c"}, "SESSION_SECRET"),
    (G, {"proxy_header": "X-User"}, "TRUSTED_PROXIES is empty"),
    (G, {"proxy_header": "X-User", "trusted_proxies": ("nonsense",)}, "not an address"),
]


@pytest.mark.parametrize(("mode", "overrides", "why"), STARTUP_REFUSALS)
def test_unsafe_configurations_refuse_to_start(
    mode: Mode, overrides: dict[str, object], why: str
) -> None:
    with pytest.raises(GateConfigError, match=why):
        methods(mode, **overrides)


STARTUP_OK = [
    (L, {}, []),
    (INS, {}, []),
    (G, {"session_secret": SECRET}, ["api_key"]),
    (
        G,
        {"session_secret": SECRET, "oidc_issuer": "http://i", "oidc_client_id": "c"},
        ["api_key", "oidc"],
    ),
    (G, {"proxy_header": "X-User", "trusted_proxies": ("10.0.0.1", "fd00::/8")}, ["proxy"]),
]


@pytest.mark.parametrize(("mode", "overrides", "names"), STARTUP_OK)
def test_configured_login_methods(
    mode: Mode, overrides: dict[str, object], names: list[str]
) -> None:
    assert methods(mode, **overrides).names() == names
