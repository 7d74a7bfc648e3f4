"""Path, mode, page-token and permission rules of sandbox files (no engine needed)."""

from __future__ import annotations

import pytest

from clients.cli.commands.sandbox import split_remote
from services.runtime.errors import InvalidArgument, OutOfRange, PermissionDenied
from services.sandbox.files import (
    MAX_PATH_BYTES,
    FileKind,
    FileStat,
    check_mode,
    check_path,
    decode_page_token,
    depth_of,
    encode_page_token,
    page_size,
)
from services.sandbox.files.archive import from_go_mode
from services.sandbox.files.permissions import allows


@pytest.mark.parametrize("path", ["/", "/work", "/work/a.txt", "/a b/ü.txt", "/.hidden"])
def test_absolute_normalised_paths_pass(path: str) -> None:
    assert check_path("path", path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "required"),
        ("work/a", "not absolute"),
        ("./a", "not absolute"),
        ("/a/../b", "not normalised"),
        ("/a/./b", "not normalised"),
        ("/a//b", "not normalised"),
        ("//a", "not normalised"),
        ("/a/", "not normalised"),
        ("/a\x00b", "NUL"),
        ("/" + "x" * MAX_PATH_BYTES, "at most 4096 bytes"),
        ("/" + "é" * 2048, "at most 4096 bytes"),  # 4097 bytes in UTF-8
    ],
)
def test_bad_paths_are_refused_naming_the_field(path: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_path("header.path", path)
    assert info.value.message.startswith("header.path: ")
    assert why in info.value.message
    assert len(info.value.message) < 300  # an over-long path is never echoed whole


def test_modes() -> None:
    check_mode("mode", 0o755, operator=False)
    check_mode("mode", 0o1777, operator=False)  # sticky is fine
    check_mode("mode", 0o4755, operator=True)
    with pytest.raises(PermissionDenied):
        check_mode("mode", 0o4755, operator=False)
    with pytest.raises(PermissionDenied):
        check_mode("mode", 0o2755, operator=False)
    with pytest.raises(InvalidArgument):
        check_mode("mode", 0o10000, operator=True)


def test_page_tokens_round_trip_and_are_bound_to_path_and_depth() -> None:
    token = encode_page_token("/work", 2, 100)
    assert decode_page_token(token, "/work", 2) == 100
    assert decode_page_token("", "/work", 2) == 0
    for path, depth in (("/other", 2), ("/work", 3)):
        with pytest.raises(InvalidArgument, match="another path or depth"):
            decode_page_token(token, path, depth)
    with pytest.raises(InvalidArgument, match="malformed"):
        decode_page_token("not-a-token!", "/work", 2)


def test_page_size_and_depth_bounds() -> None:
    assert (page_size(0), page_size(5), page_size(5000)) == (100, 5, 1000)
    assert (depth_of(0), depth_of(32)) == (1, 32)
    with pytest.raises(InvalidArgument):
        page_size(-1)
    with pytest.raises(InvalidArgument):
        depth_of(-1)
    with pytest.raises(OutOfRange):
        depth_of(33)


def test_go_file_modes_of_the_engines_stat_header() -> None:
    assert from_go_mode(0o644) == (FileKind.FILE, 0o644)
    assert from_go_mode((1 << 31) | 0o755) == (FileKind.DIRECTORY, 0o755)
    assert from_go_mode((1 << 27) | 0o777) == (FileKind.SYMLINK, 0o777)
    assert from_go_mode((1 << 23) | 0o755) == (FileKind.FILE, 0o4755)
    assert from_go_mode((1 << 31) | (1 << 20) | 0o777) == (FileKind.DIRECTORY, 0o1777)
    assert from_go_mode((1 << 26) | 0o600)[0] is FileKind.OTHER


def test_permissions_of_the_sandboxs_user() -> None:
    root_dir = FileStat("/etc", FileKind.DIRECTORY, mode=0o755, uid=0, gid=0)
    own_dir = FileStat("/home/w", FileKind.DIRECTORY, mode=0o700, uid=65534, gid=65534)
    group_file = FileStat("/g", FileKind.FILE, mode=0o640, uid=0, gid=65534)
    assert not allows(root_dir, 65534, 65534, 3)  # no write into /etc
    assert allows(root_dir, 65534, 65534, 5)  # may list it
    assert allows(own_dir, 65534, 65534, 7)
    assert allows(group_file, 65534, 65534, 4) and not allows(group_file, 65534, 65534, 2)
    assert allows(own_dir, 0, 0, 7)  # root may do anything


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("box:/work/a", ("box", "/work/a")),
        ("abc123:/", ("abc123", "/")),
        ("./local.txt", None),
        ("C:relative", None),
        (":/x", None),
        ("-", None),
    ],
)
def test_cli_remote_paths(value: str, expected: tuple[str, str] | None) -> None:
    assert split_remote(value) == expected
