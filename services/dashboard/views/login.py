"""Login, logout and the OIDC callback (all on the public list).

Login is needed only in GATED mode; elsewhere ``/login`` sends the browser on
to ``next`` (in LOOPBACK mode that page then carries a fresh token), so a
page's "go to login" on a 401 ends in one navigation, never a loop.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from http import HTTPStatus

import grpc

from services.dashboard.app import Router
from services.dashboard.auth import csrf
from services.dashboard.auth.gate import clear_cookie_header
from services.dashboard.auth.modes import Mode
from services.dashboard.auth.oidc import FLOW_COOKIE, FLOW_TTL_SECONDS, OidcError
from services.dashboard.auth.sessions import COOKIE_NAME, SessionState
from services.dashboard.auth.store import SessionRecord
from services.dashboard.pages import render_template
from services.dashboard.views import ViewContext
from services.dashboard.web import Request, Response, safe_next

log = logging.getLogger(__name__)


def register(router: Router, ctx: ViewContext) -> None:  # noqa: PLR0915 - one closure per route
    """Register the login routes."""
    gate = ctx.gate

    def logged_in(request: Request) -> bool:
        # The store, not the signature, decides: a logged-out cookie must show
        # the form, or /login and the gate would bounce the browser forever.
        if gate.sessions is None or gate.store is None:
            return False
        check = gate.sessions.decode(request.cookies.get(COOKIE_NAME))
        if check.state is not SessionState.VALID or check.session is None:
            return False
        return gate.store.get(check.session.session_id) is not None

    def login_form(
        request: Request, next_target: str, error: str = "", status: int = 200
    ) -> Response:
        form_token = secrets.token_urlsafe(24)
        methods = gate.config.methods
        html = render_template(
            "login.html",
            error=error,
            form_token=form_token,
            next_target=next_target,
            api_key_login=methods.api_key,
            oidc_login=methods.oidc,
            proxy_login=methods.proxy,
        )
        response = Response.html(html, status)
        response.add_header(
            "Set-Cookie",
            f"{csrf.LOGIN_COOKIE}={form_token}; Path=/login; Max-Age=3600; HttpOnly; "
            "SameSite=Strict" + ("; Secure" if gate.is_secure(request) else ""),
        )
        return response

    def start_session(
        request: Request,
        subject: str,
        method: str,
        next_target: str,
        *,
        api_key: str = "",
        scopes: frozenset[str] = frozenset(),
    ) -> Response:
        assert gate.sessions is not None and gate.store is not None
        # A login in a browser that still holds a session replaces it: the
        # old one must not linger, acting with the previous key.
        previous = gate.sessions.decode(request.cookies.get(COOKIE_NAME)).session
        if previous is not None:
            gate.store.delete(previous.session_id)
        session = gate.sessions.issue(subject, method)
        # The credential stays here, server-side; the cookie only names the session.
        gate.store.put(
            SessionRecord(
                session_id=session.session_id,
                subject=subject,
                method=method,
                api_key=api_key,
                scopes=scopes,
                auth_time=session.auth_time,
                last_seen=session.auth_time,
            )
        )
        response = Response.redirect(safe_next(next_target))
        response.add_header(
            "Set-Cookie", gate.session_cookie(request, gate.sessions.encode(session))
        )
        log.info("dashboard login", extra={"method": method})
        return response

    def login_page(request: Request) -> Response:
        next_target = safe_next(request.query.get("next"))
        if gate.mode is not Mode.GATED or logged_in(request):
            return Response.redirect(next_target)
        return login_form(request, next_target)

    def login_submit(request: Request) -> Response:
        form = request.form()
        next_target = safe_next(form.get("next"))
        if gate.mode is not Mode.GATED:
            return Response.redirect(next_target)
        if not csrf.form_token_matches(request):
            return login_form(request, next_target, "The form expired; try again.", 403)
        if not gate.config.methods.api_key:
            return login_form(request, next_target, "API-key login is not enabled.", 403)
        address = gate.client_address(request)
        wait = ctx.throttle.retry_after(address)
        if wait:
            # Refused before the gateway is asked: guessing keys from one
            # address costs a minute per ten wrong tries.
            log.warning("login throttled", extra={"peer": address})
            response = login_form(
                request,
                next_target,
                f"Too many wrong API keys from your address; try again in {wait} s.",
                HTTPStatus.TOO_MANY_REQUESTS,
            )
            return response.add_header("Retry-After", str(wait))
        api_key = form.get("api_key", "").strip()
        if not api_key:
            return login_form(request, next_target, "Enter an API key.", 401)
        try:
            status = ctx.gateway.check_api_key(api_key)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                ctx.throttle.failed(address)
                return login_form(request, next_target, "The gateway refused that API key.", 401)
            return login_form(request, next_target, "The gateway is unreachable; try again.", 503)
        fingerprint = hashlib.sha256(api_key.encode()).hexdigest()[:12]
        return start_session(
            request,
            f"apikey:{fingerprint}",
            "api_key",
            next_target,
            api_key=api_key,
            scopes=frozenset(status.scopes),
        )

    def logout(request: Request) -> Response:
        if gate.sessions is not None:
            check = gate.sessions.decode(request.cookies.get(COOKIE_NAME))
            if check.state is SessionState.VALID and check.session is not None:
                expected = gate.sessions.csrf_token(check.session)
                if csrf.presented_token(request) != expected:
                    return Response.error(HTTPStatus.FORBIDDEN, "csrf")
                # Server-side: the old cookie names nothing from now on.
                if gate.store is not None:
                    gate.store.delete(check.session.session_id)
        response = Response.redirect("/login")
        response.add_header("Set-Cookie", clear_cookie_header(secure=gate.is_secure(request)))
        return response

    def redirect_uri(request: Request) -> str:
        oidc = ctx.oidc
        assert oidc is not None
        if oidc.config.redirect_url:
            return oidc.config.redirect_url
        scheme = "https" if gate.is_secure(request) else "http"
        host = request.header("host") or "localhost"
        return f"{scheme}://{host}/auth/oidc/callback"

    def oidc_login(request: Request) -> Response:
        if ctx.oidc is None or gate.mode is not Mode.GATED:
            return Response.redirect(safe_next(request.query.get("next")))
        try:
            start = ctx.oidc.begin(
                next_target=safe_next(request.query.get("next")),
                redirect_uri=redirect_uri(request),
            )
        except OidcError as exc:
            return login_form(request, "/", f"Single sign-on failed: {exc}", 502)
        response = Response.redirect(start.authorize_url, HTTPStatus.FOUND)
        response.add_header(
            "Set-Cookie",
            f"{FLOW_COOKIE}={start.flow_cookie}; Path=/auth/oidc/; Max-Age={FLOW_TTL_SECONDS}; "
            "HttpOnly; SameSite=Lax" + ("; Secure" if gate.is_secure(request) else ""),
        )
        return response

    def oidc_callback(request: Request) -> Response:
        if ctx.oidc is None or gate.mode is not Mode.GATED:
            return Response.redirect("/")
        if "error" in request.query:
            message = f"The identity provider said: {request.query['error'][:100]}"
            return login_form(request, "/", message, 401)
        try:
            subject, next_target = ctx.oidc.finish(
                code=request.query.get("code", ""),
                state=request.query.get("state", ""),
                flow_cookie=request.cookies.get(FLOW_COOKIE, ""),
            )
        except OidcError as exc:
            return login_form(request, "/", f"Single sign-on failed: {exc}", 401)
        # OIDC users act with the key the operator configured for single
        # sign-on (its scopes are asked of the gateway), never the dashboard's.
        response = start_session(
            request, subject, "oidc", next_target, api_key=gate.config.sso_api_key
        )
        response.add_header("Set-Cookie", f"{FLOW_COOKIE}=; Path=/auth/oidc/; Max-Age=0")
        return response

    router.add("GET", "/login", login_page)
    router.add("POST", "/login", login_submit)
    router.add("POST", "/logout", logout)
    router.add("GET", "/auth/oidc/login", oidc_login)
    router.add("GET", "/auth/oidc/callback", oidc_callback)
