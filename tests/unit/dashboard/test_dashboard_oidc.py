"""OIDC login (authorization code + PKCE) against a stub identity provider."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest

from services.dashboard.auth.oidc import FLOW_COOKIE
from services.dashboard.auth.sessions import COOKIE_NAME
from tests.unit.dashboard.dashboard_harness import Client, running_dashboard
from tests.unit.dashboard.fake_gateway import SSO_KEY
from tests.unit.dashboard.oidc_stub import StubIdp

SECRET = "y" * 40


@pytest.fixture
def idp() -> Iterator[StubIdp]:
    stub = StubIdp().start()
    yield stub
    stub.stop()


def follow_idp(location: str) -> tuple[int, str]:
    """Let the stub provider 'log the user in': GET the authorize URL."""
    parts = urlsplit(location)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    conn.request("GET", f"{parts.path}?{parts.query}")
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status, response.getheader("Location") or ""


def callback_path(location: str) -> str:
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}"


def start_login(client: Client, next_target: str = "/tasks/t1") -> str:
    reply = client.get(f"/auth/oidc/login?next={next_target}")
    assert reply.status == 302, reply.body
    assert FLOW_COOKIE in client.cookies
    flow_cookie = next(c for c in reply.cookies() if c.startswith(FLOW_COOKIE))
    assert "HttpOnly" in flow_cookie and "Path=/auth/oidc/" in flow_cookie
    return reply.header("Location") or ""


def oidc_settings(idp: StubIdp) -> dict[str, object]:
    return {
        "require_login": True,
        "session_secret": SECRET,
        "oidc_issuer": idp.issuer,
        "oidc_client_id": idp.client_id,
        "sso_api_key": SSO_KEY,
    }


def test_oidc_login_end_to_end_with_pkce(idp: StubIdp) -> None:
    with running_dashboard(**oidc_settings(idp)) as dash:
        client = dash.client
        login_page = client.get("/login?next=/tasks/t1")
        assert b'id="oidc-login"' in login_page.body
        authorize = start_login(client)
        query = dict(parse_qsl(urlsplit(authorize).query))
        assert query["code_challenge_method"] == "S256"
        assert query["redirect_uri"] == f"http://127.0.0.1:{client.port}/auth/oidc/callback"

        status, callback = follow_idp(authorize)
        assert status == 302
        done = client.get(callback_path(callback))
        assert (done.status, done.header("Location")) == (303, "/tasks/t1")
        assert COOKIE_NAME in client.cookies and FLOW_COOKIE not in client.cookies
        (token_request,) = idp.token_requests
        assert len(token_request["code_verifier"]) >= 43

        page = client.get("/status")
        assert page.status == 200
        import re

        match = re.search(rb'name="longshore-token" content="([^"]+)"', page.body)
        assert match is not None
        client.token = match.group(1).decode()
        detail = client.get("/api/status/detail").json()
        auth = detail["auth"]
        assert auth["user"] == "ada@example.com" and auth["via"] == "oidc"
        assert auth["methods"] == ["api_key", "oidc"]
        # The OIDC user acts with the single sign-on key (read-only here), never
        # with the dashboard's own admin key.
        assert detail["gateway"]["scopes"] == ["read"]
        assert b'id="read-only"' in page.body
        dash.state.calls.clear()
        refused = client.post("/api/tasks", body={"title": "sso write"})
        assert refused.status == 403 and refused.json()["error"] == "permission_denied"
        assert "needs scope write" in refused.json()["message"]
        assert set(dash.state.calls) == {SSO_KEY}


def test_oidc_without_a_key_of_its_own_refuses_to_start(idp: StubIdp) -> None:
    from services.dashboard.auth.modes import GateConfigError

    settings = oidc_settings(idp)
    settings["sso_api_key"] = ""
    with pytest.raises(GateConfigError, match="SSO_API_KEY"), running_dashboard(**settings):
        pass


def test_oidc_state_mismatch_is_refused_without_a_loop(idp: StubIdp) -> None:
    with running_dashboard(**oidc_settings(idp)) as dash:
        client = dash.client
        authorize = start_login(client)
        _, callback = follow_idp(authorize)
        parts = urlsplit(callback)
        query = dict(parse_qsl(parts.query))
        forged = f"{parts.path}?code={query['code']}&state=forged"
        reply = client.get(forged)
        # An error page, not a redirect: nothing can bounce back to the provider.
        assert reply.status == 401 and b"state mismatch" in reply.body
        assert COOKIE_NAME not in client.cookies


def test_oidc_tampered_flow_cookie_is_refused(idp: StubIdp) -> None:
    with running_dashboard(**oidc_settings(idp)) as dash:
        client = dash.client
        authorize = start_login(client)
        _, callback = follow_idp(authorize)
        client.cookies[FLOW_COOKIE] = client.cookies[FLOW_COOKIE][:-4] + "AAAA"
        reply = client.get(callback_path(callback))
        assert reply.status == 401 and b"tampered" in reply.body


def test_oidc_callback_with_another_flows_cookie_is_refused(idp: StubIdp) -> None:
    with running_dashboard(**oidc_settings(idp)) as dash:
        client = dash.client
        first = start_login(client)
        first_cookie = client.cookies[FLOW_COOKIE]
        start_login(client)  # a second flow: its cookie holds another verifier
        _, callback = follow_idp(first)
        assert client.cookies[FLOW_COOKIE] != first_cookie
        reply = client.get(callback_path(callback))
        # state of flow 1 vs the cookie of flow 2: refused before the provider is asked.
        assert reply.status == 401
        client.cookies[FLOW_COOKIE] = first_cookie
        assert client.get(callback_path(callback)).status == 303  # the right flow works


def test_oidc_code_is_single_use(idp: StubIdp) -> None:
    with running_dashboard(**oidc_settings(idp)) as dash:
        client = dash.client
        authorize = start_login(client)
        flow_cookie = client.cookies[FLOW_COOKIE]
        _, callback = follow_idp(authorize)
        assert client.get(callback_path(callback)).status == 303
        client.cookies.pop(COOKIE_NAME)
        client.cookies[FLOW_COOKIE] = flow_cookie
        replay = client.get(callback_path(callback))
        assert replay.status == 401 and b"answered 400" in replay.body


def test_oidc_provider_error_is_shown(idp: StubIdp) -> None:
    with running_dashboard(**oidc_settings(idp)) as dash:
        reply = dash.client.get("/auth/oidc/callback?error=access_denied")
        assert reply.status == 401 and b"access_denied" in reply.body


def test_id_token_claims_are_checked(idp: StubIdp) -> None:
    from services.dashboard.auth.oidc import OidcClient, OidcConfig, OidcError
    from services.dashboard.auth.sessions import SessionCodec

    codec = SessionCodec(SECRET, ttl_seconds=60, max_lifetime_seconds=600, clock=lambda: 1e9)
    client = OidcClient(
        OidcConfig(issuer=idp.issuer, client_id=idp.client_id), signer=codec, clock=lambda: 1e9
    )
    good = idp.id_token("n", exp=2e9)
    assert client._claims(good)["sub"] == "u-1"
    for overrides, why in (
        ({"iss": "http://other", "exp": 2e9}, "another issuer"),
        ({"aud": "someone-else", "exp": 2e9}, "another client"),
        ({"exp": 1}, "expired"),
        ({"sub": "", "exp": 2e9}, "subject"),
    ):
        with pytest.raises(OidcError, match=why):
            client._claims(idp.id_token("n", **overrides))
    with pytest.raises(OidcError, match="no ID token"):
        client._claims("")
