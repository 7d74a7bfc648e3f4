"""Identities: what access checks read of a sandbox, kept once a task has it.

The engine is a counting fake here (the manager's ``get`` and its known ids);
the real path is covered by the ownership, process and pool suites.
"""

from __future__ import annotations

import pytest

from services.runtime.errors import NotFound
from services.sandbox import labels
from services.sandbox.identities import Identities
from services.sandbox.model import SandboxInfo


class FakeManager:
    """Inspects from a table, counting them; remembers the refs it resolved."""

    def __init__(self, boxes: dict[str, SandboxInfo]) -> None:
        self.boxes = boxes
        self.inspects = 0
        self.known: dict[str, str] = {}

    def get(self, ref: str) -> SandboxInfo:
        self.inspects += 1
        info = self.boxes.get(ref)
        if info is None:
            raise NotFound(f"sandbox {ref!r} not found")
        self.known[ref] = info.sandbox_id
        return info


def box(cid: str, task: str, *, pool_member: bool = False, name: str = "") -> SandboxInfo:
    lbl = {labels.TASK_ID: task, labels.PROFILE: "coder", labels.DEPLOYMENT: "d"}
    if pool_member:
        lbl = {**lbl, labels.TASK_ID: "unknown", labels.WARM: "1", labels.POOL: "coder"}
    return SandboxInfo(
        sandbox_id=cid, name=name or f"/{cid}-slot", state="running", image="i", labels=lbl
    )


def test_a_tasks_sandbox_is_inspected_once_then_kept() -> None:
    fake = FakeManager({"c1": box("c1", "t-1")})
    ids = Identities(fake.get, fake.known.get)
    assert ids.of("c1").task == "t-1"
    assert ids.of("c1").task == "t-1"
    assert fake.inspects == 1
    # Forgotten (removed): the next check inspects again, and sees it gone.
    ids.forget("c1")
    del fake.boxes["c1"]
    with pytest.raises(NotFound):
        ids.of("c1")
    assert fake.inspects == 2


def test_an_untaken_warm_member_is_never_kept_a_taken_one_is() -> None:
    member = box("m1", "", pool_member=True)
    assert member.task == "" and member.warm_pool == "coder"
    taken = box("m2", "", pool_member=True, name="/" + labels.container_name("d", "coder", "t-9"))
    assert taken.task == "t-9"
    fake = FakeManager({"m1": member, "m2": taken})
    ids = Identities(fake.get, fake.known.get)
    ids.of("m1")
    ids.of("m1")
    assert fake.inspects == 2 and len(ids) == 0
    ids.of("m2")
    assert ids.of("m2").task == "t-9"
    assert fake.inspects == 3 and len(ids) == 1


def test_the_table_is_bounded_oldest_use_out_first() -> None:
    fake = FakeManager({f"c{i}": box(f"c{i}", f"t-{i}") for i in range(4)})
    ids = Identities(fake.get, fake.known.get, limit=2)
    ids.of("c0")
    ids.of("c1")
    ids.of("c0")  # used again: c1 is now the oldest
    ids.of("c2")
    assert len(ids) == 2
    before = fake.inspects
    ids.of("c0")
    assert fake.inspects == before  # kept
    ids.of("c1")
    assert fake.inspects == before + 1  # was pushed out


def test_a_handout_keeps_what_it_inspected_so_the_first_check_costs_nothing() -> None:
    fake = FakeManager({})
    ids = Identities(fake.get, fake.known.get)
    taken = box("m3", "", pool_member=True, name=labels.container_name("d", "coder", "t-3"))
    ids.keep(taken)
    ids.keep(box("m4", "", pool_member=True))  # untaken: not kept
    fake.known["m3"] = "m3"
    assert ids.of("m3").task == "t-3"
    assert fake.inspects == 0 and len(ids) == 1
