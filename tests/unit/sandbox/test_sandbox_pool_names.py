"""A warm member's task is read from its name: exact for any ids, never fooled by a look-alike."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.sandbox import labels
from services.sandbox.pools import Member, verdict
from services.sandbox.pools.members import Pool

nasty = st.one_of(
    st.text(min_size=1),
    st.text(alphabet="ab/:-_.0123456789abcdef", min_size=1, max_size=90),
    st.sampled_from(["unknown", "a/b", "x" * 64, "t-0123456789ab-x", "--0123456789ab"]),
)


def member_labels(deployment: str, profile: str) -> dict[str, str]:
    return labels.sandbox_labels(
        deployment=deployment,
        profile=profile,
        task_id="",
        persist=True,
        owner="o",
        config_hash="h" * 16,
        pool_size=2,
    )


@given(nasty, nasty, nasty)
@settings(max_examples=300)
def test_a_taken_member_belongs_to_exactly_the_task_of_its_key_name(d: str, p: str, t: str) -> None:
    lbl = member_labels(d, p)
    assert lbl[labels.TASK_ID] == labels.UNKNOWN
    assert labels.task_of(lbl, labels.container_name(d, p, t)) == labels.sanitize(t)
    # Its slot name, or another profile's or deployment's key name, says no task.
    assert labels.task_of(lbl, labels.pool_member_name(d, labels.sanitize(p), "h" * 16, 0)) == ""
    assert labels.task_of(lbl, labels.container_name(d, p + "x", t)) == ""
    assert labels.task_of(lbl, labels.container_name(d + "x", p, t)) == ""
    # A name shaped like a key name whose digest does not match says none.
    dep, prof, task = labels.sanitize(d), labels.sanitize(p), labels.sanitize(t)
    forged = f"longshore-{dep[:20]}-{prof[:20]}-{'0' * 12}-{task}"
    assume(forged != labels.container_name(d, p, t))
    assert labels.task_of(lbl, forged) == ""


def test_an_ordinary_sandbox_keeps_its_task_label() -> None:
    lbl = labels.sandbox_labels(
        deployment="d", profile="p", task_id="t/1", persist=True, owner="o", config_hash="h"
    )
    assert not labels.is_pool_member(lbl)
    # Even when its image's labels (a snapshot of a member) would say otherwise.
    inherited = {labels.WARM: "1", labels.POOL: "p", labels.POOL_SIZE: "2"} | lbl
    assert not labels.is_pool_member(inherited)
    assert labels.task_of(lbl, "any-name") == labels.sanitize("t/1")


def _member(name: str, *, config_hash: str = "h" * 16, state: str = "running") -> Member:
    lbl = member_labels("d", "p") | {labels.CONFIG_HASH: config_hash}
    return Member(sandbox_id="c1", name=name, state=state, labels=lbl)


def test_the_drain_rule() -> None:
    pool = Pool("p", "p", 2, "h" * 16, "img", None)
    slots = {labels.pool_member_name("d", "p", "h" * 16, i): i for i in range(2)}
    first = labels.pool_member_name("d", "p", "h" * 16, 0)
    beyond = labels.pool_member_name("d", "p", "h" * 16, 2)
    assert verdict(_member(first), pool, slots, owner_dead=False) == ""
    assert "spec changed" in verdict(_member(first, config_hash="x"), pool, slots, False)
    assert "beyond" in verdict(_member(beyond), pool, slots, False)
    assert "exited" in verdict(_member(first, state="exited"), pool, slots, False)
    drained = Pool("p", "p", 0, "h" * 16, "img", None)
    assert "size 0" in verdict(_member(first), drained, {}, False)
    # No pool here: another live manager's business; a dead one's is drained.
    assert verdict(_member(first), None, {}, owner_dead=False) == ""
    assert "dead" in verdict(_member(first), None, {}, owner_dead=True)
