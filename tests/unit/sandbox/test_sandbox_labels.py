"""The label sanitizer, container names and config hashes."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from services.sandbox import labels
from services.sandbox.hardening import resolve_spec
from services.sandbox.model import Spec, Volume
from services.sandbox.settings import SandboxSection

VALID = re.compile(r"\A[A-Za-z0-9_.-]{1,63}\Z")
NAME = re.compile(r"\A[a-zA-Z0-9][a-zA-Z0-9_.-]+\Z")  # the engine's container-name rule

nasty = st.one_of(
    st.text(),
    st.text(alphabet="ab/:-_.", max_size=80),
    st.text(alphabet=st.characters(min_codepoint=0x80), max_size=20),
    st.sampled_from(["", "unknown", "a/b", "a:b", "a_b", "x" * 63, "x" * 64]),
)


@given(nasty)
def test_output_is_always_a_valid_label_value(value: str) -> None:
    assert VALID.match(labels.sanitize(value))


@given(nasty, nasty)
@settings(max_examples=400)
def test_distinct_inputs_never_share_a_label_value(a: str, b: str) -> None:
    if a != b:
        assert labels.sanitize(a) != labels.sanitize(b)


@given(st.lists(nasty, max_size=40, unique=True))
def test_sanitizer_is_injective_over_sets(values: list[str]) -> None:
    assert len({labels.sanitize(v) for v in values}) == len(values)


def test_plain_values_stay_readable_and_missing_is_unknown() -> None:
    assert labels.sanitize("task-42.v1_x") == "task-42.v1_x"
    assert labels.sanitize("") == labels.sanitize(None) == "unknown"
    assert labels.sanitize("unknown") != "unknown"
    assert labels.sanitize("a/b") != labels.sanitize("a:b")
    assert labels.sanitize("a/b").startswith("a_b--")
    cut = labels.sanitize("x" * 100)
    assert len(cut) == 63 and cut.startswith("x" * 40)
    # A value that looks like a digest-suffixed one cannot impersonate it.
    assert labels.sanitize(labels.sanitize("a/b")) != labels.sanitize("a/b")


@given(nasty, nasty, nasty)
def test_container_names_are_valid_deterministic_and_distinct(d: str, p: str, t: str) -> None:
    name = labels.container_name(d, p, t)
    assert NAME.match(name) and name == labels.container_name(d, p, t)
    assert name != labels.container_name(d, p, t + "x")
    assert labels.container_name("a-b", "c", "t") != labels.container_name("a", "b-c", "t")


def test_config_hash_covers_everything_but_env_values() -> None:
    section = SandboxSection(
        default_image="img", allowed_host_paths=("/srv",), allowed_capabilities=("NET_ADMIN",)
    )
    base = resolve_spec(Spec(env={"TOKEN": "a"}), section).config_hash
    assert resolve_spec(Spec(env={"TOKEN": "b"}), section).config_hash == base
    variants = [
        Spec(env={"OTHER": "a"}),
        Spec(env={"TOKEN": "a"}, image="img2"),
        Spec(env={"TOKEN": "a"}, cpus=2),
        Spec(env={"TOKEN": "a"}, memory_bytes=64 * 1024 * 1024),
        Spec(env={"TOKEN": "a"}, pids_limit=77),
        Spec(env={"TOKEN": "a"}, volumes=(Volume("/srv", "/srv", True),)),
        Spec(env={"TOKEN": "a"}, workdir="/w"),
        Spec(env={"TOKEN": "a"}, read_only_rootfs=True),
        Spec(env={"TOKEN": "a"}, user="1000"),
        Spec(env={"TOKEN": "a"}, cap_add=("NET_ADMIN",)),
    ]
    hashes = {resolve_spec(v, section).config_hash for v in variants}
    assert base not in hashes and len(hashes) == len(variants)
    # Defaults written out explicitly are the same spec.
    explicit = Spec(env={"TOKEN": "z"}, image="img", cpus=section.default_cpus)
    assert resolve_spec(explicit, section).config_hash == base


def test_created_ns_prefers_the_label() -> None:
    assert labels.created_ns({labels.CREATED_NS: "123"}, 5) == 123
    assert labels.created_ns({}, 2) == 2_000_000_000
    assert labels.created_ns({labels.CREATED_NS: "junk"}, 1) == 1_000_000_000
