"""The auth gate: one decision per request, before any view runs.

The gate consults :mod:`.public_paths` (the only public list), then the mode
(:mod:`.modes`), then the credentials the mode accepts, then CSRF for
state-changing requests. Its answers follow one shape: ``/api/*`` gets a 401
JSON body ``{"error": "unauthenticated" | "session_expired" | "session_ended",
"login_url"}`` and a dead cookie is cleared with ``Max-Age=0``; HTML routes
are redirected to ``/login?next=…``.

A cookie is only a pointer: a validly signed cookie whose session the
:class:`~.store.SessionStore` no longer holds (logout, a key the gateway
refused, a restart) is ``session_ended``. The identity a request runs as
carries the gateway key its calls use: the session's own key, the key the
operator configured for single sign-on, or "" for the dashboard's own key.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit

from services.dashboard.auth import csrf, public_paths
from services.dashboard.auth.modes import LoginMethods, Mode
from services.dashboard.auth.proxy import ProxyAuth
from services.dashboard.auth.sessions import COOKIE_NAME, SessionCodec, SessionState
from services.dashboard.auth.store import SessionStore
from services.dashboard.web import Request, Response, login_url

log = logging.getLogger(__name__)

#: Header the page sends on every API call: the per-start token in LOOPBACK
#: mode, the session's CSRF token otherwise.
TOKEN_HEADER = "X-Longshore-Token"  # noqa: S105 - a header name

#: Headers a reverse proxy adds; a LOOPBACK dashboard refuses them because a
#: proxy in front would expose the login-free UI.
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


@dataclass(frozen=True)
class Identity:
    """Who a request runs as.

    Attributes:
        subject: A user name, ``loopback``, ``insecure`` or ``anonymous``.
        method: ``loopback``, ``insecure``, ``api_key``, ``oidc``, ``proxy``
            or ``public`` (a public path, no credential checked).
        token: What the page must send in ``X-Longshore-Token`` ("" = none).
        api_key: The gateway key this request's calls use; "" = the
            dashboard's own configured key (loopback, insecure, public).
        scopes: The key's scopes when known (a session remembers them from
            login); None = ask the gateway.
        session_id: The server-side session, for API-key and OIDC logins.
    """

    subject: str
    method: str
    token: str = ""
    api_key: str = field(default="", repr=False)
    scopes: frozenset[str] | None = None
    session_id: str = ""

    @property
    def ends_with_its_key(self) -> bool:
        """Whether the gateway refusing this identity's key ends its session.

        Only an API-key login's session: the user's own key was rotated. A
        configured key (the dashboard's, the single sign-on key) being
        refused is the operator's problem, which no login can fix.
        """
        return self.method == "api_key" and bool(self.session_id)


@dataclass
class Verdict:
    """The gate's decision: a denial response, or an identity to run as.

    Attributes:
        identity: Set when the request may proceed.
        denial: Set when it may not; send it as is.
        cookies: ``Set-Cookie`` values to add to the eventual response
            (a refreshed session).
    """

    identity: Identity | None = None
    denial: Response | None = None
    cookies: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GateConfig:
    """Everything the gate needs, decided at start.

    Attributes:
        mode: LOOPBACK, GATED or INSECURE.
        port: The port the dashboard listens on (for the Host check).
        bind_host: The host the dashboard binds (allowed as a Host too).
        methods: Login methods configured for GATED mode.
        page_token: The per-start token served to pages in LOOPBACK mode.
        sso_api_key: The gateway key OIDC and trusted-proxy logins act with.
    """

    mode: Mode
    port: int
    bind_host: str = "127.0.0.1"
    methods: LoginMethods = field(default_factory=lambda: LoginMethods(False, False, False))
    page_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    sso_api_key: str = field(default="", repr=False)


def cookie_header(value: str, *, max_age: int, secure: bool) -> str:
    """A ``Set-Cookie`` value for the session cookie."""
    parts = [
        f"{COOKIE_NAME}={value}",
        "Path=/",
        f"Max-Age={max_age}",
        "HttpOnly",
        "SameSite=Lax",
    ]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def clear_cookie_header(*, secure: bool) -> str:
    """A ``Set-Cookie`` value that deletes the session cookie."""
    return cookie_header("", max_age=0, secure=secure)


class Gate:
    """Decides, for each request, whether it may reach a view.

    Args:
        config: Mode, port and configured login methods.
        sessions: Cookie codec; required when API-key or OIDC login is on.
        store: The server-side sessions the cookies point to; required
            with ``sessions``.
        proxy: Trusted-proxy-header authenticator, when configured.
    """

    def __init__(
        self,
        config: GateConfig,
        *,
        sessions: SessionCodec | None = None,
        store: SessionStore | None = None,
        proxy: ProxyAuth | None = None,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.store = store
        self.proxy = proxy
        self._proxy_csrf_key = secrets.token_bytes(32)
        self._allowed_hosts = self._loopback_hosts(config)

    @staticmethod
    def _loopback_hosts(config: GateConfig) -> frozenset[str]:
        names = {"127.0.0.1", "localhost", "[::1]"}
        bind = config.bind_host
        names.add(f"[{bind}]" if ":" in bind else bind)
        hosts = {f"{name}:{config.port}" for name in names}
        if config.port == 80:
            hosts |= names
        return frozenset(host.lower() for host in hosts)

    @property
    def mode(self) -> Mode:
        """The gate's mode."""
        return self.config.mode

    def is_secure(self, request: Request) -> bool:
        """Whether the browser reached us over HTTPS (directly or via a trusted proxy)."""
        if self.proxy is not None and self.proxy.trusts(request.peer):
            return (request.header("x-forwarded-proto") or "").lower() == "https"
        return False

    def client_address(self, request: Request) -> str:
        """The browser's address: the socket's, or the one a trusted proxy names.

        Behind a trusted proxy every browser shares the proxy's address, so
        per-address limits use the last ``X-Forwarded-For`` hop it appended.
        """
        if self.proxy is not None and self.proxy.trusts(request.peer):
            hops = [hop.strip() for hop in (request.header("x-forwarded-for") or "").split(",")]
            if hops and hops[-1]:
                return hops[-1][:100]
        return request.peer

    def check(self, request: Request) -> Verdict:
        """Decide one request. See the module docstring for the answers."""
        mode = self.config.mode
        if mode is Mode.LOOPBACK:
            refusal = self._check_loopback_origin(request)
            if refusal is not None:
                return Verdict(denial=refusal)
        if public_paths.is_public(request.path):
            # The login views guard their own forms (double-submit token).
            return Verdict(identity=Identity("anonymous", "public"))
        if mode is Mode.INSECURE:
            return self._with_csrf(request, Identity("insecure", "insecure"))
        if mode is Mode.LOOPBACK:
            return self._check_loopback_token(request)
        return self._check_gated(request)

    # LOOPBACK ---------------------------------------------------------------

    def _check_loopback_origin(self, request: Request) -> Response | None:
        host = (request.header("host") or "").lower()
        if host not in self._allowed_hosts:
            log.warning("refused a request with a foreign Host header", extra={"host": host[:100]})
            return Response.error(
                HTTPStatus.FORBIDDEN,
                "host_not_allowed",
                "this dashboard only answers to localhost (DNS rebinding guard)",
            )
        if any(request.header(name) for name in FORWARDING_HEADERS):
            return Response.error(
                HTTPStatus.FORBIDDEN,
                "proxied_loopback",
                "a loopback dashboard has no login and must not sit behind a reverse "
                "proxy: set LONGSHORE_DASHBOARD_REQUIRE_LOGIN=1 and a login method",
            )
        return None

    def _check_loopback_token(self, request: Request) -> Verdict:
        identity = Identity("loopback", "loopback", self.config.page_token)
        if not public_paths.is_api(request.path):
            return self._with_csrf(request, identity)
        presented = request.header(TOKEN_HEADER) or ""
        if hmac.compare_digest(presented.encode(), self.config.page_token.encode()):
            return self._with_csrf(request, identity)
        return Verdict(denial=self._unauthenticated(request, "unauthenticated", clear=False))

    # GATED ------------------------------------------------------------------

    def _check_gated(self, request: Request) -> Verdict:
        if self.proxy is not None:
            user = self.proxy.user(request)
            if user:
                token = hmac.new(self._proxy_csrf_key, user.encode(), "sha256").hexdigest()
                identity = Identity(user, "proxy", token, api_key=self.config.sso_api_key)
                return self._with_csrf(request, identity)
        if self.sessions is None:
            return Verdict(denial=self._unauthenticated(request, "unauthenticated", clear=False))
        cookie = request.cookies.get(COOKIE_NAME)
        check = self.sessions.decode(cookie)
        if check.state is SessionState.VALID and check.session is not None:
            session = check.session
            record = self.store.get(session.session_id) if self.store is not None else None
            if record is None:
                # Signed by us, but logged out, refused by the gateway or from
                # before a restart: the server no longer holds the session.
                return Verdict(denial=self._unauthenticated(request, "session_ended", clear=True))
            api_key = record.api_key if record.method == "api_key" else self.config.sso_api_key
            identity = Identity(
                session.subject,
                session.method,
                self.sessions.csrf_token(session),
                api_key=api_key,
                scopes=record.scopes if record.method == "api_key" else None,
                session_id=session.session_id,
            )
            verdict = self._with_csrf(request, identity)
            fresh = self.sessions.refreshed(session)
            if fresh is not None and verdict.identity is not None:
                verdict.cookies.append(self.session_cookie(request, self.sessions.encode(fresh)))
            return verdict
        if check.state is SessionState.EXPIRED:
            return Verdict(denial=self._unauthenticated(request, "session_expired", clear=True))
        dead = check.state is SessionState.INVALID
        return Verdict(denial=self._unauthenticated(request, "unauthenticated", clear=dead))

    def session_cookie(self, request: Request, value: str) -> str:
        """A ``Set-Cookie`` value carrying a freshly signed session.

        The browser keeps the cookie for the session's hard lifetime; the
        signed expiry inside decides, so an idle session is answered
        ``session_expired`` (and cleared) rather than silently vanishing.
        """
        max_age = int(self.sessions.max_lifetime_seconds) if self.sessions else 0
        return cookie_header(value, max_age=max_age, secure=self.is_secure(request))

    # Answers ----------------------------------------------------------------

    def session_ended(self, request: Request) -> Response:
        """The answer when the gateway refused a session's key (its session is gone)."""
        return self._unauthenticated(request, "session_ended", clear=True)

    def _unauthenticated(self, request: Request, error: str, *, clear: bool) -> Response:
        if public_paths.is_api(request.path):
            target = self._page_of(request)
            response = Response.error(HTTPStatus.UNAUTHORIZED, error, login_url=login_url(target))
        else:
            response = Response.redirect(login_url(request.target))
        if clear:
            response.add_header("Set-Cookie", clear_cookie_header(secure=self.is_secure(request)))
        return response

    @staticmethod
    def _page_of(request: Request) -> str:
        """The page an API call came from (its Referer on this site), for ``next``."""
        referer = request.header("referer")
        if not referer:
            return "/"
        parts = urlsplit(referer)
        if parts.netloc and parts.netloc.lower() != (request.header("host") or "").lower():
            return "/"
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def _with_csrf(self, request: Request, identity: Identity) -> Verdict:
        refusal = csrf.check(request, expected_token=identity.token)
        if refusal is not None:
            return Verdict(denial=refusal)
        return Verdict(identity=identity)
