"""The dashboard in headless Chromium against the real stack (all processes).

Gateway, kanban and sandbox run as processes; the dashboard is a real
process too; tasks are created with the ``longshore`` CLI. Every page is
screenshotted at 1280x800 and at a phone's 390x844 into
``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from longshore.sandbox.v1 import lifecycle_pb2, sandbox_pb2, sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.integration.dashboard.dashboard_process import (
    SESSION_SECRET,
    DashboardProcess,
    artifacts_dir,
    cli,
    dashboard_process,
)
from tests.integration.gateway.stack import RealStack, auth, real_stack

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SESSION_TTL = 4


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str
) -> Iterator[RealStack]:
    home = tmp_path_factory.mktemp("dash-e2e")
    with real_stack(home, deployment=f"t{run_id}-dashe2e", image=sandbox_image) as s:
        yield s


@pytest.fixture(scope="module")
def dash(stack: RealStack) -> Iterator[DashboardProcess]:
    with dashboard_process(stack) as d:
        yield d


@pytest.fixture(scope="module")
def gated(stack: RealStack) -> Iterator[DashboardProcess]:
    env = {
        "LONGSHORE_DASHBOARD_REQUIRE_LOGIN": "1",
        "LONGSHORE_DASHBOARD_SESSION_SECRET": SESSION_SECRET,
        "LONGSHORE_DASHBOARD_SESSION_TTL_SECONDS": str(SESSION_TTL),
    }
    with dashboard_process(stack, env=env, name="dashboard-gated") as d:
        yield d


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    b = playwright.chromium.launch(
        executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
    )
    yield b
    b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    p = context.new_page()
    p.set_default_timeout(15000)
    yield p
    context.close()


def shoot(page: Page, name: str) -> None:
    """Save the page at desktop and phone widths (then restore desktop)."""
    out = artifacts_dir()
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(out / f"{name}-1280x800.png"), full_page=False)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(out / f"{name}-390x844.png"), full_page=False)
    page.set_viewport_size(DESKTOP)


def task_id_of(created: Any) -> str:
    return str(created["task_id"] if "task_id" in created else created["task"]["task_id"])


def card(page: Page, task_id: str) -> Any:
    return page.locator(f'article.card[data-task-id="{task_id}"]')


def test_board_shows_cli_tasks_live_and_moving_a_card_moves_the_task(
    stack: RealStack, dash: DashboardProcess, page: Page
) -> None:
    first = task_id_of(cli(stack, "task", "create", "Triage the flaky test", "--priority", "2"))
    page.goto(f"{dash.url}/boards/default")
    expect(card(page, first)).to_be_visible()
    expect(page.locator("#live")).to_have_text("live")
    # Created after the page loaded: it appears without a reload.
    second = task_id_of(
        cli(stack, "task", "create", "Write the release notes", "--status", "triage")
    )
    expect(card(page, second)).to_be_visible()
    expect(
        page.locator('section.column[data-status="triage"]').locator(f'[data-task-id="{second}"]')
    ).to_be_visible()
    # The ready card says why it is not running.
    expect(card(page, first).locator(".reason")).not_to_be_empty()

    card(page, first).locator("select.move").select_option("todo")
    expect(
        page.locator('section.column[data-status="todo"]').locator(f'[data-task-id="{first}"]')
    ).to_be_visible()
    shown = cli(stack, "task", "show", first)
    task = shown.get("task", shown)
    assert task["status"] in ("todo", "TASK_STATUS_TODO"), shown
    shoot(page, "board")


def test_a_running_tasks_output_appears_live(
    stack: RealStack, dash: DashboardProcess, page: Page, sandbox_image: str
) -> None:
    cli(
        stack,
        "profile",
        "create",
        "e2e-builder",
        "--executor",
        "sandbox",
        "--image",
        sandbox_image,
        "--keep-sandbox",
    )
    task_id = task_id_of(
        cli(
            stack,
            "task",
            "create",
            "Count to three",
            "--assignee",
            "e2e-builder",
            "--sh",
            "echo one; sleep 3; echo two; sleep 1; echo three",
        )
    )
    page.goto(f"{dash.url}/tasks/{task_id}")
    expect(page.locator("#task-title")).to_have_text("Count to three")
    cli(stack, "dispatch")
    output = page.locator("#task-output")
    expect(output).to_contain_text("one", timeout=30000)
    # Live: the first line is on the page while the command is still sleeping.
    assert "three" not in output.inner_text()
    expect(output).to_contain_text("three", timeout=30000)
    expect(page.locator("#task-runs tbody tr").first).to_contain_text("succeeded", timeout=30000)
    expect(page.locator("#task-events")).to_contain_text("spawned")
    shoot(page, "task")

    # The row shows what issue 13 asks of it: paused state and the lease.
    with stack.channel() as channel:
        sandboxes = SandboxServiceStub(channel)
        admin = auth(stack.keys.admin)
        (kept,) = sandboxes.ListSandboxes(
            sandbox_service_pb2.ListSandboxesRequest(task_id=task_id), metadata=admin
        ).sandboxes
        lease = lifecycle_pb2.SetSandboxLeaseRequest(
            sandbox_id=kept.sandbox_id, on_expiry=sandbox_pb2.LEASE_EXPIRY_REMOVE
        )
        lease.ttl.FromSeconds(3600)
        sandboxes.SetSandboxLease(lease, metadata=admin)
        pause = lifecycle_pb2.PauseSandboxRequest(sandbox_id=kept.sandbox_id)
        sandboxes.PauseSandbox(pause, metadata=admin)
    page.goto(f"{dash.url}/sandboxes")
    row = page.locator("#sandboxes tbody tr", has_text=task_id)
    expect(row).to_be_visible()
    expect(row).to_contain_text("e2e-builder")
    expect(row.locator(".pill")).to_have_text("paused")
    expect(row.locator("td.lease")).to_have_text(re.compile(r"^(59m|1h) \(remove\)$"))
    expect(row.locator("td.pool")).to_have_text("—")
    page.click("#reap-preview")
    expect(page.locator("#reap-result")).to_contain_text("Dry run")
    shoot(page, "sandboxes")


def test_dispatcher_and_status_pages(stack: RealStack, dash: DashboardProcess, page: Page) -> None:
    cli(stack, "task", "create", "Nobody owns this", "--priority", "1")
    page.goto(f"{dash.url}/dispatcher")
    expect(page.locator("#preview-result")).to_contain_text("nothing was written")
    expect(page.locator("#ready-reasons tbody")).to_contain_text("Nobody owns this")
    page.click("#tick")
    expect(page.locator("#last-tick-time")).to_contain_text("loopback")
    shoot(page, "dispatcher")

    page.goto(f"{dash.url}/status")
    expect(page.locator("#backends tbody")).to_contain_text("kanban")
    expect(page.locator("#backends tbody")).to_contain_text("serving")
    expect(page.locator("#auth")).to_contain_text("loopback")
    # The gateway's headline figures: this page's own status calls at least.
    expect(page.locator("#traffic")).to_contain_text("calls per second")
    expect(page.locator("#traffic")).to_contain_text("p99 latency")
    expect(page.locator("#traffic")).to_contain_text("held streams")
    expect(page.locator("#traffic")).to_contain_text(re.compile(r"[1-9]\d* in \d+ s"))
    shoot(page, "status")


def navigations(page: Page) -> list[str]:
    seen: list[str] = []
    page.on(
        "framenavigated", lambda frame: seen.append(frame.url) if frame == page.main_frame else None
    )
    return seen


def test_loopback_401_causes_at_most_one_navigation_in_5_seconds(
    dash: DashboardProcess, page: Page
) -> None:
    page.goto(f"{dash.url}/boards/default")
    expect(page.locator("#live")).to_have_text("live")
    # From now on every API call is refused, as after a restart with a new token.
    page.route(
        re.compile(r".*/api/(?!status$).*"),
        lambda route: route.fulfill(
            status=401,
            content_type="application/json",
            body='{"error":"unauthenticated","login_url":"/login?next=/boards/default"}',
        ),
    )
    seen = navigations(page)
    # Fire and forget: the one allowed navigation may replace the page (and this
    # script's context) before the three calls settle.
    page.evaluate(
        "() => { [1, 2, 3].forEach(() => Longshore.api('/api/boards').catch(() => null)); }"
    )
    page.wait_for_timeout(5000)
    assert len(seen) <= 1, seen
    expect(page.locator("#banner")).to_contain_text("refused this page's token")


def login(page: Page, gated: DashboardProcess, key: str) -> None:
    page.goto(f"{gated.url}/boards/default")
    expect(page).to_have_url(re.compile(r"/login\?next=/boards/default$"))
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{gated.url}/boards/default")


def test_gated_login_end_to_end_and_expired_session_lands_on_login_once(
    stack: RealStack, gated: DashboardProcess, page: Page
) -> None:
    page.goto(f"{gated.url}/login?next=/boards/default")
    page.fill("input[name=api_key]", "wrong-key")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("refused")
    shoot(page, "login")

    login(page, gated, stack.keys.reader)
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator(".who .user")).to_contain_text("apikey:")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["longshore_session"]["httpOnly"] is True
    assert cookies["longshore_session"]["sameSite"] == "Lax"

    # Let the session expire, then make the page call the API.
    seen = navigations(page)
    refusals: list[tuple[Any, dict[str, str]]] = []

    def record(route: Any) -> None:
        response = route.fetch()
        if response.status == 401:
            refusals.append((response.json(), response.headers))
        route.fulfill(response=response)

    page.route("**/api/boards", record)
    time.sleep(SESSION_TTL + 1)
    # Several calls at once: the page must still navigate only once.
    with contextlib.suppress(PlaywrightError):  # the page may already be leaving
        page.evaluate(
            "typeof Longshore !== 'undefined' && Promise.all([1, 2, 3].map(() =>"
            " Longshore.api('/api/boards').catch(() => null)))"
        )
    expect(page).to_have_url(re.compile(r"/login\?next=/boards/default$"))
    page.wait_for_timeout(3000)
    assert len(seen) == 1, seen
    expect(page.locator("input[name=api_key]")).to_be_visible()
    body, headers = refusals[0]
    assert body == {"error": "session_expired", "login_url": "/login?next=/boards/default"}
    assert "Max-Age=0" in headers.get("set-cookie", "")
    assert "longshore_session" not in {c["name"] for c in page.context.cookies()}


def sign_out(page: Page) -> None:
    page.click("form.logout button[type=submit]")
    expect(page).to_have_url(re.compile(r"/login"))


def test_a_read_only_login_shows_no_write_controls_and_cannot_write(
    stack: RealStack, gated: DashboardProcess, page: Page
) -> None:
    task_id = task_id_of(cli(stack, "task", "create", "Look, do not touch", "--priority", "1"))
    login(page, gated, stack.keys.admin)
    expect(card(page, task_id)).to_be_visible()
    expect(card(page, task_id).locator("select.move")).to_be_visible()
    expect(page.locator("#create-form")).to_have_count(1)
    expect(page.locator("#read-only")).to_have_count(0)
    shoot(page, "board-admin")
    sign_out(page)

    login(page, gated, stack.keys.reader)
    expect(card(page, task_id)).to_be_visible()
    expect(page.locator("#read-only")).to_be_visible()
    for control in ("#create-form", "select.move", "select.assign", "button.block"):
        expect(page.locator(control)).to_have_count(0)
    shoot(page, "board-read-only")
    page.goto(f"{gated.url}/dispatcher")
    expect(page.locator("#tick")).to_have_count(0)
    page.goto(f"{gated.url}/sandboxes")
    expect(page.locator("#reap")).to_have_count(0)
    # Writing anyway, from the page itself: the gateway's own refusal.
    refusal = page.evaluate(
        """async (id) => {
          const move = {method: "POST", body: {status: "todo"}};
          try { await Longshore.api(`/api/tasks/${id}/move`, move); }
          catch (e) { return {status: e.status, body: e.body}; }
          return null;
        }""",
        task_id,
    )
    assert refusal is not None and refusal["status"] == 403, refusal
    assert "needs scope 'write'" in refusal["body"]["message"], refusal
    shown = cli(stack, "task", "show", task_id)
    assert shown.get("task", shown)["status"] in ("ready", "TASK_STATUS_READY"), shown


def test_logout_then_the_old_cookie_is_refused(
    stack: RealStack, gated: DashboardProcess, browser: Browser, page: Page
) -> None:
    login(page, gated, stack.keys.admin)
    (old,) = [c for c in page.context.cookies() if c["name"] == "longshore_session"]
    sign_out(page)
    assert "longshore_session" not in {c["name"] for c in page.context.cookies()}
    # Another browser presents the old cookie: refused, sent to the login page.
    other = browser.new_context(viewport=DESKTOP)
    try:
        other.add_cookies([old])  # type: ignore[list-item]
        replay = other.new_page()
        replay.goto(f"{gated.url}/boards/default")
        expect(replay).to_have_url(re.compile(r"/login\?next=/boards/default$"))
        expect(replay.locator("input[name=api_key]")).to_be_visible()
        api = other.request.get(f"{gated.url}/api/boards")
        assert api.status == 401 and api.json()["error"] in ("session_ended", "unauthenticated")
    finally:
        other.close()


@pytest.fixture(scope="module")
def throttled(stack: RealStack) -> Iterator[DashboardProcess]:
    # Its own process: the throttle counts per address, and every browser here is 127.0.0.1.
    env = {
        "LONGSHORE_DASHBOARD_REQUIRE_LOGIN": "1",
        "LONGSHORE_DASHBOARD_SESSION_SECRET": SESSION_SECRET,
    }
    with dashboard_process(stack, env=env, name="dashboard-throttled") as d:
        yield d


def test_the_eleventh_wrong_login_within_a_minute_is_throttled(
    stack: RealStack, throttled: DashboardProcess, page: Page
) -> None:
    statuses: list[int] = []
    page.on(
        "response",
        lambda r: statuses.append(r.status) if r.request.method == "POST" else None,
    )
    for attempt in range(11):
        page.goto(f"{throttled.url}/login?next=/boards/default")
        page.fill("input[name=api_key]", f"lsk_wrong_{attempt}")
        page.click("button[type=submit]")
        expect(page.locator(".error")).to_be_visible()
    assert statuses == [401] * 10 + [429], statuses
    expect(page.locator(".error")).to_contain_text("Too many wrong API keys")
    shoot(page, "login-throttled")
    # Even the right key waits out the minute.
    page.goto(f"{throttled.url}/login?next=/boards/default")
    page.fill("input[name=api_key]", stack.keys.admin)
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("Too many wrong API keys")


def test_the_status_page_says_why_a_backend_is_not_serving(page: Page) -> None:
    # The real dashboard server; the gateway behind it reports a backend down
    # with its reason, as the real one does while the Docker engine is away.
    from longshore.gateway.v1 import gateway_service_pb2

    from tests.unit.dashboard.dashboard_harness import running_dashboard

    with running_dashboard() as dash:
        dash.state.extra_backends.append(
            gateway_service_pb2.BackendStatus(
                name="sandbox-engine",
                address="unix:///var/run/docker.sock",
                health=gateway_service_pb2.BACKEND_HEALTH_NOT_SERVING,
                detail="docker engine unreachable: connection refused",
            )
        )
        page.goto(f"http://127.0.0.1:{dash.client.port}/status")
        row = page.locator("#backends tbody tr", has_text="sandbox-engine")
        expect(row.locator(".pill")).to_have_text("not serving")
        expect(row.locator(".why")).to_have_text("docker engine unreachable: connection refused")
        shoot(page, "status-not-serving")
