"""Start a dashboard on port 0 in front of the fake gateway, and talk HTTP to it."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.testclient import TestClient

from services.dashboard.asgi import build_asgi
from services.dashboard.gateway import GatewayClient
from services.dashboard.server import Built, build_dashboard
from services.dashboard.settings import DashboardSection, DashboardSettings
from services.runtime.testing import serve_in_process
from tests.unit.dashboard.fake_gateway import DASHBOARD_KEY, FakeState, fake_services


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def cookies(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]


@dataclass
class Client:
    port: int
    cookies: dict[str, str] = field(default_factory=dict)
    token: str = ""

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = dict(headers or {})
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        if form is not None:
            from urllib.parse import urlencode

            data = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        if self.token and "X-Longshore-Token" not in sent:
            sent["X-Longshore-Token"] = self.token
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        reply = Reply(response.status, response.getheaders(), response.read())
        conn.close()
        for cookie in reply.cookies():
            pair = cookie.split(";", 1)[0]
            name, _, value = pair.partition("=")
            if "Max-Age=0" in cookie:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return reply

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Reply:
        return self.request("POST", path, **kwargs)


@dataclass
class Running:
    built: Built
    state: FakeState
    client: Client


@contextmanager
def running_dashboard(
    gateway_key: str = DASHBOARD_KEY, gateway_address: str | None = None, **section: Any
) -> Iterator[Running]:
    state = FakeState()
    with serve_in_process(fake_services(state)) as backend:
        settings = replace(
            DashboardSettings(),
            dashboard=replace(
                DashboardSection(listen="127.0.0.1:0", api_key=gateway_key), **section
            ),
        )
        gateway = GatewayClient(gateway_address or backend.address, api_key=gateway_key, timeout=2)
        built = build_dashboard(settings, gateway=gateway)
        built.server.start()
        try:
            yield Running(built, state, Client(built.server.port))
        finally:
            built.server.stop()
            gateway.close()


class Clock:
    """A settable epoch clock for sessions and the login throttle."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class InProcess:
    """The dashboard's Starlette app in a TestClient, in front of the fake gateway."""

    built: Built
    state: FakeState
    clock: Clock

    def client(self, address: str = "203.0.113.5") -> TestClient:
        """A browser at ``address`` (its own cookie jar)."""
        return TestClient(
            build_asgi(self.built.app), base_url="http://dash.example", client=(address, 40000)
        )


@contextmanager
def in_process_dashboard(**section: Any) -> Iterator[InProcess]:
    """A gated dashboard (API-key login) served by Starlette's TestClient."""
    state = FakeState()
    clock = Clock()
    fields: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "api_key": DASHBOARD_KEY,
        "require_login": True,
        "session_secret": "t" * 40,
        **section,
    }
    with serve_in_process(fake_services(state)) as backend:
        settings = replace(DashboardSettings(), dashboard=DashboardSection(**fields))
        gateway = GatewayClient(backend.address, api_key=DASHBOARD_KEY, timeout=5)
        built = build_dashboard(settings, gateway=gateway, clock=clock)
        try:
            yield InProcess(built, state, clock)
        finally:
            built.server.socket.close()
            gateway.close()


def form_login(client: TestClient, key: str, next_target: str = "/boards/default") -> Any:
    """Fill the login form as a browser would (its double-submit token included)."""
    page = client.get(f"/login?next={next_target}", follow_redirects=False)
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match is not None
    return client.post(
        "/login",
        data={"csrf_token": match.group(1), "next": next_target, "api_key": key},
        follow_redirects=False,
    )


def page_token_of(html: str) -> str:
    """The token a page carries for the API (CSRF token when logged in)."""
    match = re.search(r'name="longshore-token" content="([^"]*)"', html)
    assert match is not None
    return match.group(1)
