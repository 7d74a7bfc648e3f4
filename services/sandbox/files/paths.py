"""The rules of a path and a mode in a file request (no engine needed)."""

from __future__ import annotations

import posixpath

from services.runtime.errors import InvalidArgument, PermissionDenied, quote

#: Longest path accepted, in UTF-8 bytes (Linux's PATH_MAX).
MAX_PATH_BYTES = 4096
_SPECIAL_BITS = 0o6000  # setuid, setgid: operators only


def check_path(field_name: str, path: str) -> str:
    """Refuses a path that is not absolute and normalised; returns it.

    Raises:
        InvalidArgument: Empty, relative, not normalised (``.``, ``..``,
            ``//`` or a trailing ``/``), a NUL, or over 4096 bytes.
    """
    if not path:
        raise InvalidArgument(f"{field_name}: required")
    size = len(path.encode("utf-8", errors="surrogatepass"))
    if size > MAX_PATH_BYTES:
        raise InvalidArgument(f"{field_name}: at most {MAX_PATH_BYTES} bytes, got {size}")
    if "\x00" in path:
        raise InvalidArgument(f"{field_name}: contains a NUL byte")
    if not path.startswith("/"):
        raise InvalidArgument(f"{field_name}: {quote(path)} is not absolute")
    # normpath keeps a leading "//"; the root alone is "/".
    if path != "/" and (posixpath.normpath(path) != path or path.startswith("//")):
        raise InvalidArgument(
            f"{field_name}: {quote(path)} is not normalised (no '.', '..', '//' or trailing '/')"
        )
    return path


def check_mode(field_name: str, mode: int, *, operator: bool) -> None:
    """Refuses mode bits beyond 0o7777, and setuid/setgid from a non-operator.

    Raises:
        InvalidArgument: Over 0o7777.
        PermissionDenied: setuid/setgid asked by a non-operator.
    """
    if mode > 0o7777:
        raise InvalidArgument(f"{field_name}: {mode:#o} exceeds 0o7777")
    if mode & _SPECIAL_BITS and not operator:
        raise PermissionDenied(f"{field_name}: setuid/setgid bits are for operators only")
