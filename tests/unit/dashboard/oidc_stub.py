"""A stub OpenID Connect provider for tests: discovery, authorize, token.

It issues one-time codes bound to the PKCE challenge, redirect URI, client and
nonce, and refuses a token request whose ``code_verifier`` does not hash to
the challenge (S256 only). ID tokens are unsigned (``alg: none``): the
dashboard reads them from the back channel and checks claims, not signatures.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class StubIdp:
    client_id: str = "dashboard"
    user: dict[str, Any] = field(default_factory=lambda: {"sub": "u-1", "email": "ada@example.com"})
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def issuer(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def id_token(self, nonce: str, **overrides: Any) -> str:
        claims = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": int(time.time()),
            "exp": int(time.time()) + 300,
            "nonce": nonce,
            **self.user,
            **overrides,
        }
        header = b64(json.dumps({"alg": "none"}).encode())
        return f"{header}.{b64(json.dumps(claims).encode())}."

    def start(self) -> StubIdp:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, body: Any = None, location: str = "") -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = dict(parse_qsl(parts.query))
                if parts.path == "/.well-known/openid-configuration":
                    self.reply(
                        200,
                        {
                            "issuer": idp.issuer,
                            "authorization_endpoint": f"{idp.issuer}/authorize",
                            "token_endpoint": f"{idp.issuer}/token",
                        },
                    )
                elif parts.path == "/authorize":
                    problems = [
                        name
                        for name, ok in (
                            ("response_type", query.get("response_type") == "code"),
                            ("client_id", query.get("client_id") == idp.client_id),
                            ("pkce", query.get("code_challenge_method") == "S256"),
                            ("challenge", len(query.get("code_challenge", "")) == 43),
                            ("state", bool(query.get("state"))),
                            ("nonce", bool(query.get("nonce"))),
                            ("scope", "openid" in query.get("scope", "").split()),
                        )
                        if not ok
                    ]
                    if problems:
                        self.reply(400, {"error": "invalid_request", "problems": problems})
                        return
                    code = secrets.token_urlsafe(16)
                    idp.codes[code] = query
                    target = (
                        query["redirect_uri"]
                        + "?"
                        + urlencode({"code": code, "state": query["state"]})
                    )
                    self.reply(302, location=target)
                else:
                    self.reply(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                idp.token_requests.append(form)
                grant = idp.codes.pop(form.get("code", ""), None)  # single use
                if grant is None or form.get("grant_type") != "authorization_code":
                    self.reply(400, {"error": "invalid_grant"})
                    return
                verifier = form.get("code_verifier", "")
                if b64(hashlib.sha256(verifier.encode()).digest()) != grant["code_challenge"]:
                    self.reply(400, {"error": "invalid_grant", "detail": "PKCE"})
                    return
                if (
                    form.get("redirect_uri") != grant["redirect_uri"]
                    or form.get("client_id") != grant["client_id"]
                ):
                    self.reply(400, {"error": "invalid_grant", "detail": "redirect/client"})
                    return
                self.reply(
                    200,
                    {
                        "access_token": "at",
                        "token_type": "Bearer",
                        "id_token": idp.id_token(grant["nonce"]),
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
