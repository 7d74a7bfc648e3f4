"""Defaults and the hardened host config (the policy's rules: test_sandbox_policy.py)."""

from __future__ import annotations

import pytest

from services.runtime.errors import InvalidArgument
from services.sandbox.hardening import host_config_kwargs, resolve_spec
from services.sandbox.model import Network, ResolvedSpec, Spec, Volume
from services.sandbox.settings import DEFAULT_CAPABILITIES, SandboxSection

SECTION = SandboxSection(
    default_image="img", allowed_host_paths=("/srv",), allowed_capabilities=("NET_ADMIN",)
)


def test_image_is_required_without_a_default() -> None:
    with pytest.raises(InvalidArgument, match=r"spec\.image: required"):
        resolve_spec(Spec(), SandboxSection())


def test_defaults_fill_zero_fields() -> None:
    spec = resolve_spec(Spec(volumes=(Volume("/srv/", "/data/", True),)), SECTION)
    assert spec.image == "img" and spec.network is Network.BRIDGE
    assert spec.cpus == SECTION.default_cpus and spec.pids_limit == SECTION.default_pids_limit
    assert spec.memory_bytes == SECTION.default_memory_bytes
    assert spec.volumes == (Volume("/srv", "/data", True),)


def test_host_config_is_hardened_by_default() -> None:
    spec = resolve_spec(Spec(cap_add=("cap_net_admin",)), SECTION)
    kw = host_config_kwargs(spec, SECTION)
    assert kw["init"] is True and kw["cap_drop"] == ["ALL"]
    assert set(kw["cap_add"]) == {*DEFAULT_CAPABILITIES, "NET_ADMIN"}
    assert kw["security_opt"] == ["no-new-privileges:true"]
    assert kw["pids_limit"] == SECTION.default_pids_limit
    assert kw["mem_limit"] == SECTION.default_memory_bytes == kw["memswap_limit"]
    assert kw["nano_cpus"] == int(SECTION.default_cpus * 1e9)
    assert "/tmp" in kw["tmpfs"] and kw["read_only"] is False
    assert kw["network_mode"] == "bridge" and kw["binds"] == []


def test_options_read_only_no_network_ro_volumes_and_named_volumes() -> None:
    spec = resolve_spec(
        Spec(
            read_only_rootfs=True,
            network=Network.NONE,
            volumes=(Volume("/srv", "/srv", True), Volume("cache-vol", "/cache")),
        ),
        SECTION,
    )
    kw = host_config_kwargs(spec, SECTION)
    assert kw["read_only"] is True and kw["network_mode"] == "none"
    assert kw["binds"] == ["/srv:/srv:ro", "cache-vol:/cache:rw"]


def test_host_config_refuses_the_engine_socket_whatever_built_the_spec() -> None:
    # A ResolvedSpec made without resolve_spec still never binds the socket.
    spec = resolve_spec(Spec(), SECTION)
    forged = ResolvedSpec(
        **{
            **{k: getattr(spec, k) for k in spec.__dataclass_fields__},
            "volumes": (Volume("/var/run/docker.sock", "/s"),),
        }
    )
    with pytest.raises(InvalidArgument, match="would expose the engine"):
        host_config_kwargs(forged, SECTION)


def test_resolved_spec_repr_hides_env_values() -> None:
    spec = resolve_spec(Spec(env={"TOKEN": "hunter2"}), SECTION)
    assert "hunter2" not in repr(spec)
