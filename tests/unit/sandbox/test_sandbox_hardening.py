"""Spec validation and the hardened host config."""

from __future__ import annotations

import pytest

from services.runtime.errors import InvalidArgument
from services.sandbox.hardening import exposes_engine, host_config_kwargs, resolve_spec
from services.sandbox.model import Network, Spec, Volume
from services.sandbox.settings import DEFAULT_CAPABILITIES, SandboxSection

SECTION = SandboxSection(default_image="img")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (Spec(volumes=(Volume("relative", "/x"),)), "spec.volumes[0].host_path"),
        (
            Spec(volumes=(Volume("/ok", "/x"), Volume("/ok", "rel"))),
            "spec.volumes[1].container_path",
        ),
        (Spec(volumes=(Volume("/var/run/docker.sock", "/s"),)), "spec.volumes[0].host_path"),
        (Spec(volumes=(Volume("/var/run", "/s"),)), "spec.volumes[0].host_path"),
        (Spec(volumes=(Volume("/", "/host"),)), "spec.volumes[0].host_path"),
        (Spec(volumes=(Volume("/srv/../run", "/s"),)), "spec.volumes[0].host_path"),
        (Spec(volumes=(Volume("/srv", "/"),)), "spec.volumes[0].container_path"),
        (Spec(volumes=(Volume("/a:b", "/x"),)), "spec.volumes[0].host_path"),
        (Spec(cap_add=("SYS ADMIN",)), "spec.cap_add[0]"),
        (Spec(workdir="rel"), "spec.workdir"),
        (Spec(user="root; rm"), "spec.user"),
        (Spec(env={"BAD NAME": "x"}), "spec.env"),
        (Spec(cpus=-1), "spec.cpus"),
        (Spec(memory_bytes=-1), "spec.memory_bytes"),
        (Spec(pids_limit=-1), "spec.pids_limit"),
    ],
)
def test_invalid_specs_name_the_field(spec: Spec, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve_spec(spec, SECTION)
    assert info.value.message.startswith(field)


def test_image_is_required_without_a_default() -> None:
    with pytest.raises(InvalidArgument, match=r"spec\.image: required"):
        resolve_spec(Spec(), SandboxSection())


def test_engine_socket_paths() -> None:
    assert exposes_engine("/var/run/docker.sock") and exposes_engine("/run/")
    assert exposes_engine("/var") and exposes_engine("/tmp/x.sock")
    assert not exposes_engine("/srv/data") and not exposes_engine("/var/lib/app")


def test_defaults_fill_zero_fields() -> None:
    spec = resolve_spec(Spec(volumes=(Volume("/srv/", "/data/", True),)), SECTION)
    assert spec.image == "img" and spec.network is Network.BRIDGE
    assert spec.cpus == SECTION.default_cpus and spec.pids_limit == SECTION.default_pids_limit
    assert spec.volumes == (Volume("/srv", "/data", True),)


def test_host_config_is_hardened_by_default() -> None:
    spec = resolve_spec(Spec(cap_add=("cap_net_admin",)), SECTION)
    kw = host_config_kwargs(spec, SECTION)
    assert kw["init"] is True and kw["cap_drop"] == ["ALL"]
    assert set(kw["cap_add"]) == {*DEFAULT_CAPABILITIES, "NET_ADMIN"}
    assert kw["security_opt"] == ["no-new-privileges:true"]
    assert kw["pids_limit"] == SECTION.default_pids_limit
    assert kw["mem_limit"] == SECTION.default_memory_bytes
    assert kw["nano_cpus"] == int(SECTION.default_cpus * 1e9)
    assert "/tmp" in kw["tmpfs"] and kw["read_only"] is False
    assert kw["network_mode"] == "bridge" and kw["binds"] == []


def test_options_read_only_no_network_and_ro_volumes() -> None:
    spec = resolve_spec(
        Spec(read_only_rootfs=True, network=Network.NONE, volumes=(Volume("/srv", "/srv", True),)),
        SECTION,
    )
    kw = host_config_kwargs(spec, SECTION)
    assert kw["read_only"] is True and kw["network_mode"] == "none"
    assert kw["binds"] == ["/srv:/srv:ro"]


def test_resolved_spec_repr_hides_env_values() -> None:
    spec = resolve_spec(Spec(env={"TOKEN": "hunter2"}), SECTION)
    assert "hunter2" not in repr(spec)
