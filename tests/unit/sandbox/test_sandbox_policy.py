"""The operator's sandbox policy: every field rule, its boundaries and its message."""

from __future__ import annotations

import dataclasses
import math

import pytest

from services.runtime.config import SettingsError, load_settings
from services.runtime.errors import InvalidArgument, PermissionDenied
from services.sandbox import policy
from services.sandbox.hardening import resolve_spec
from services.sandbox.model import Spec, Volume
from services.sandbox.policy import admit, check_image_allowed, exposes_engine
from services.sandbox.settings import SandboxSection, SandboxSettings

SECTION = SandboxSection(default_image="img")
MiB = 1024 * 1024


def open_section(**kw: object) -> SandboxSection:
    return dataclasses.replace(SECTION, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (Spec(volumes=(Volume("rel/x", "/x"),)), "spec.volumes[0].host_path: must be an absolute"),
        (Spec(volumes=(Volume("", "/x"),)), "spec.volumes[0].host_path: required"),
        (Spec(volumes=(Volume("v", "/x"),)), "spec.volumes[0].host_path: must be an absolute"),
        (
            Spec(volumes=(Volume("/srv", "/x"), Volume("/srv", "rel"))),
            "spec.volumes[1].container_path: must be an absolute",
        ),
        (Spec(volumes=(Volume("/var/run/docker.sock", "/s"),)), "would expose the engine"),
        (Spec(volumes=(Volume("/var/run", "/s"),)), "would expose the engine"),
        (Spec(volumes=(Volume("//var//run/", "/s"),)), "would expose the engine"),
        (Spec(volumes=(Volume("/", "/host"),)), "would expose the engine"),
        (Spec(volumes=(Volume("/srv/x.sock", "/s"),)), "would expose the engine"),
        (Spec(volumes=(Volume("/srv/../etc", "/s"),)), "spec.volumes[0].host_path: must not"),
        (Spec(volumes=(Volume("/srv", "/a/../b"),)), "spec.volumes[0].container_path: must not"),
        (Spec(volumes=(Volume("/srv", "/"),)), "spec.volumes[0].container_path: cannot mount"),
        (Spec(volumes=(Volume("/srv", "/tmp/"),)), "'/tmp' is the sandbox's own tmpfs"),
        (
            Spec(volumes=(Volume("/srv", "/d"), Volume("/srv", "/d/"))),
            "spec.volumes[1].container_path: '/d' is already mounted by spec.volumes[0]",
        ),
        (Spec(volumes=(Volume("/a:b", "/x"),)), "spec.volumes[0].host_path: must not contain"),
        (Spec(volumes=(Volume("/a\nb", "/x"),)), "spec.volumes[0].host_path: must not contain"),
        (Spec(volumes=(Volume("/srv", "/x,y"),)), "spec.volumes[0].container_path: must not"),
        (
            Spec(volumes=(Volume("/" + "a" * 4096, "/x"),)),
            "spec.volumes[0].host_path: at most 4096 characters",
        ),
        (Spec(volumes=(Volume("/srv", "/x"),) * 33), "spec.volumes: at most 32 entries, got 33"),
        (Spec(cap_add=("SYS ADMIN",)), "spec.cap_add[0]: invalid capability 'SYS ADMIN'"),
        (Spec(cap_add=("KILL",) * 65), "spec.cap_add: at most 64 entries, got 65"),
        (Spec(workdir="rel"), "spec.workdir: must be an absolute path, got 'rel'"),
        (Spec(workdir="/" + "w" * 4096), "spec.workdir: at most 4096 characters"),
        (Spec(workdir="/a\x00b"), "spec.workdir: must not contain control characters"),
        (Spec(user="root; rm"), "spec.user: expected uid[:gid]"),
        (Spec(user="u" * 65), "spec.user: expected uid[:gid] or a user name of at most 64"),
        (Spec(env={"A=B": "x"}), "spec.env: invalid variable name 'A=B'"),
        (Spec(env={"1X": "x"}), "spec.env: invalid variable name '1X'"),
        (Spec(env={"": "x"}), "spec.env: invalid variable name ''"),
        (Spec(env={f"V{i}": "" for i in range(129)}), "spec.env: at most 128 entries, got 129"),
        (Spec(env={"BIG": "x" * (32 * 1024 + 1)}), "spec.env['BIG']: value is 32769 bytes"),
        (Spec(env={"NUL": "a\x00b"}), "spec.env['NUL']: value must not contain NUL"),
        (
            Spec(env={f"V{i}": "x" * (32 * 1024) for i in range(8)}),
            "spec.env: 262168 bytes of names and values, at most 262144",
        ),
        (Spec(image="a b"), "spec.image: must not contain whitespace"),
        (Spec(image="img\x07"), "spec.image: must not contain whitespace or control"),
        (Spec(image="i" * 256), "spec.image: at most 255 characters, got 256"),
        (Spec(cpus=-1), "spec.cpus: must not be negative, got -1"),
        (Spec(cpus=math.nan), "spec.cpus: must be a finite number, got nan"),
        (Spec(cpus=math.inf), "spec.cpus: must be a finite number, got inf"),
        (Spec(cpus=0.001), "spec.cpus: at least 0.01 when set, got 0.001"),
        (Spec(memory_bytes=-1), "spec.memory_bytes: must not be negative"),
        (Spec(memory_bytes=6 * MiB - 1), "spec.memory_bytes: at least 6291456 (6 MiB"),
        (Spec(pids_limit=-1), "spec.pids_limit: must not be negative"),
        (Spec(pids_limit=7), "spec.pids_limit: at least 8 when set"),
    ],
)
def test_malformed_fields_are_invalid_argument_naming_the_field(spec: Spec, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        admit(spec, SECTION)
    assert message in info.value.message
    assert info.value.message.startswith("spec.")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            Spec(volumes=(Volume("/etc", "/x"),)),
            "spec.volumes[0].host_path: '/etc' is not under sandbox.allowed_host_paths (empty)",
        ),
        (
            Spec(volumes=(Volume("/var/lib/docker/containers", "/x"),)),
            "spec.volumes[0].host_path: '/var/lib/docker/containers' is not under",
        ),
        (
            Spec(cap_add=("SYS_ADMIN",)),
            "spec.cap_add[0]: 'SYS_ADMIN' is not in sandbox.allowed_capabilities (empty)",
        ),
        (Spec(cap_add=("ALL",)), "spec.cap_add[0]: 'ALL' is not in sandbox.allowed_capabilities"),
        (Spec(cap_add=("cap_net_raw",)), "spec.cap_add[0]: 'NET_RAW' is not in"),
        (Spec(cpus=2.01), "spec.cpus: 2.01 exceeds sandbox.max_cpus (2)"),
        (
            Spec(memory_bytes=16 * 1024 * MiB + 1),
            "spec.memory_bytes: 17179869185 exceeds sandbox.max_memory_bytes (17179869184)",
        ),
        (Spec(memory_bytes=2**62), "spec.memory_bytes: 4611686018427387904 exceeds"),
        (Spec(pids_limit=4097), "spec.pids_limit: 4097 exceeds sandbox.max_pids_limit (4096)"),
    ],
)
def test_beyond_policy_is_permission_denied_naming_field_and_setting(
    spec: Spec, message: str
) -> None:
    with pytest.raises(PermissionDenied) as info:
        admit(spec, SECTION)
    assert message in info.value.message


def test_boundary_values_are_admitted() -> None:
    spec = Spec(
        cpus=2.0,
        memory_bytes=16 * 1024 * MiB,
        pids_limit=4096,
        env={f"V{i}": "x" * 2000 for i in range(128)},
        workdir="/" + "w" * 4095,
        user="u" * 64,
        image="i" * 255,
    )
    assert admit(spec, SECTION).image == "i" * 255
    low = Spec(cpus=0.01, memory_bytes=6 * MiB, pids_limit=8, env={"V": "x" * 32 * 1024})
    admit(low, SECTION)
    total = Spec(env={f"V{i}": "x" * (32 * 1024 - 3) for i in range(8)})  # 262144 exactly
    admit(total, SECTION)


def test_malformed_is_reported_before_beyond_policy() -> None:
    spec = Spec(volumes=(Volume("/etc", "/x"), Volume("/var/run/docker.sock", "/s")))
    with pytest.raises(InvalidArgument, match=r"spec\.volumes\[1\]\.host_path"):
        admit(spec, SECTION)


def test_allowed_host_paths_admit_the_path_and_below_it_only() -> None:
    section = open_section(allowed_host_paths=("/srv/data/", "/opt/x"))
    for path in ("/srv/data", "/srv/data/", "/srv/data/a/b", "/opt/x", "//srv//data/./a"):
        admitted = admit(Spec(volumes=(Volume(path, "/m"),)), section)
        assert admitted.volumes[0].host_path.startswith(("/srv/data", "/opt/x"))
    for path in ("/srv/database", "/srv", "/opt", "/opt/xy"):
        with pytest.raises(PermissionDenied) as info:
            admit(Spec(volumes=(Volume(path, "/m"),)), section)
        assert "sandbox.allowed_host_paths ('/srv/data/', '/opt/x')" in info.value.message


def test_the_engine_socket_stays_refused_under_an_allowed_root() -> None:
    section = open_section(allowed_host_paths=("/",))
    admit(Spec(volumes=(Volume("/etc", "/e", True),)), section)
    for path in ("/var/run/docker.sock", "/run", "/", "/var"):
        with pytest.raises(InvalidArgument, match="would expose the engine"):
            admit(Spec(volumes=(Volume(path, "/m"),)), section)


def test_named_volumes_need_no_allowlist() -> None:
    admitted = admit(Spec(volumes=(Volume("cache_1.v-2", "/cache"),)), SECTION)
    assert admitted.volumes == (Volume("cache_1.v-2", "/cache"),)
    assert policy.is_named_volume("ab") and not policy.is_named_volume("a")
    assert not policy.is_named_volume("-x") and not policy.is_named_volume("a/b")
    assert not policy.is_named_volume(".x") and not policy.is_named_volume("v" * 256)


def test_allowed_capabilities_and_the_minimal_list() -> None:
    section = open_section(allowed_capabilities=("net_admin", "CAP_SYS_PTRACE"))
    admitted = admit(Spec(cap_add=("NET_ADMIN", "cap_sys_ptrace", "KILL")), section)
    assert admitted.cap_add == ("NET_ADMIN", "SYS_PTRACE", "KILL")
    with pytest.raises(PermissionDenied, match=r"\(NET_ADMIN, SYS_PTRACE\)"):
        admit(Spec(cap_add=("SYS_ADMIN",)), section)


def test_maxima_are_the_operators() -> None:
    section = open_section(max_cpus=4.0, max_memory_bytes=64 * 1024 * MiB, max_pids_limit=10_000)
    admit(Spec(cpus=4, memory_bytes=64 * 1024 * MiB, pids_limit=10_000), section)


def test_admin_gets_no_bypass_resolve_spec_runs_the_same_policy() -> None:
    # resolve_spec (acquire) and CheckSandboxSpec share admit(): one path for every caller.
    with pytest.raises(PermissionDenied, match=r"spec\.cap_add\[0\]"):
        resolve_spec(Spec(cap_add=("SYS_ADMIN",)), SECTION)


def test_messages_quote_at_most_100_characters() -> None:
    name = "A=" + "x" * 500
    with pytest.raises(InvalidArgument) as info:
        admit(Spec(env={name: ""}), SECTION)
    assert len(info.value.message) < 160 and info.value.message.endswith("…")
    with pytest.raises(PermissionDenied) as denied:
        admit(Spec(volumes=(Volume("/etc/" + "y" * 600, "/x"),)), SECTION)
    assert len(denied.value.message) < 220


def test_profile_images() -> None:
    check_image_allowed("other", [], SECTION)
    check_image_allowed("a:1", ["a:1", "b:2"], SECTION)
    check_image_allowed("", ["img"], SECTION)  # empty = the default image
    check_image_allowed("img", [""], SECTION)
    with pytest.raises(PermissionDenied) as info:
        check_image_allowed("x", ["a:1", "b:2"], SECTION)
    assert info.value.message == "spec.image: 'x' is not one of the profile's images"


def test_engine_socket_paths() -> None:
    assert exposes_engine("/var/run/docker.sock") and exposes_engine("/run/")
    assert exposes_engine("/var") and exposes_engine("/tmp/x.sock")
    assert exposes_engine("//run/containerd")
    assert not exposes_engine("/srv/data") and not exposes_engine("/var/lib/app")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LONGSHORE_SANDBOX_ALLOWED_HOST_PATHS": "srv"}, "sandbox.allowed_host_paths: 'srv'"),
        ({"LONGSHORE_SANDBOX_ALLOWED_HOST_PATHS": "/a/../b"}, "sandbox.allowed_host_paths"),
        ({"LONGSHORE_SANDBOX_ALLOWED_CAPABILITIES": "NOT A CAP"}, "invalid capability"),
        ({"LONGSHORE_SANDBOX_MAX_CPUS": "nan"}, "sandbox.max_cpus: must be a positive"),
        ({"LONGSHORE_SANDBOX_MAX_PIDS_LIMIT": "0"}, "sandbox.max_pids_limit: must be positive"),
        (
            {"LONGSHORE_SANDBOX_DEFAULT_CPUS": "3"},
            "sandbox.default_cpus: 3.0 exceeds sandbox.max_cpus (2.0)",
        ),
    ],
)
def test_bad_policy_settings_fail_at_start(
    tmp_path: object, env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(SandboxSettings, environ={"LONGSHORE_HOME": str(tmp_path), **env})
    assert message in str(info.value)


def test_policy_settings_from_the_environment(tmp_path: object) -> None:
    env = {
        "LONGSHORE_HOME": str(tmp_path),
        "LONGSHORE_SANDBOX_ALLOWED_HOST_PATHS": "/srv,/data",
        "LONGSHORE_SANDBOX_ALLOWED_CAPABILITIES": "NET_ADMIN",
        "LONGSHORE_SANDBOX_MAX_MEMORY_BYTES": str(2 * 1024 * MiB),
    }
    section = load_settings(SandboxSettings, environ=env).sandbox
    assert section.allowed_host_paths == ("/srv", "/data")
    assert section.allowed_capabilities == ("NET_ADMIN",)
    assert section.max_memory_bytes == 2 * 1024 * MiB
    default = load_settings(SandboxSettings, environ={"LONGSHORE_HOME": str(tmp_path)}).sandbox
    assert default.allowed_host_paths == () and default.allowed_capabilities == ()
