"""The restart policy of `longshore up`: backoff, give-up, reset after a healthy spell."""

from __future__ import annotations

from clients.cli.supervisor import CrashPolicy


def test_backoff_doubles_and_gives_up_after_five_rapid_crashes() -> None:
    policy = CrashPolicy()
    delays = [policy.on_crash("kanban", uptime=1.0) for _ in range(5)]
    assert delays == [1.0, 2.0, 4.0, 8.0, None]


def test_backoff_is_capped_at_sixty_seconds() -> None:
    policy = CrashPolicy(backoff_base=16.0, max_rapid_crashes=10)
    assert [policy.on_crash("k", 0.0) for _ in range(4)] == [16.0, 32.0, 60.0, 60.0]


def test_a_healthy_spell_resets_the_count() -> None:
    policy = CrashPolicy()
    for _ in range(4):
        policy.on_crash("sandbox", uptime=5.0)
    assert policy.on_crash("sandbox", uptime=300.0) == 1.0
    assert policy.crashes["sandbox"] == 1


def test_children_are_counted_separately() -> None:
    policy = CrashPolicy()
    for _ in range(4):
        policy.on_crash("a", 0.0)
    assert policy.on_crash("b", 0.0) == 1.0
