"""Opaque page tokens and page sizes for every List call.

A token is URL-safe base64 of JSON carrying the last row's sort key and a
fingerprint of the request's filters, so a token replayed with other filters
is INVALID_ARGUMENT rather than a silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from services.runtime.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int, field_name: str = "page_size") -> int:
    """Return the effective page size: 0 = 100, capped at 1000.

    Raises:
        InvalidArgument: ``requested`` is negative.
    """
    if requested < 0:
        raise InvalidArgument(f"{field_name}: must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _fingerprint(scope: str, filters: Any) -> str:
    raw = json.dumps([scope, filters], sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:12]


def encode_token(scope: str, filters: Any, key: list[Any]) -> str:
    """Return an opaque token resuming after ``key`` for this scope and filters."""
    body = json.dumps({"f": _fingerprint(scope, filters), "k": key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_token(token: str, scope: str, filters: Any) -> list[Any] | None:
    """Return the sort key a token resumes after, or None for an empty token.

    Raises:
        InvalidArgument: The token is malformed or was issued for other filters.
    """
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
        key = body["k"]
        fingerprint = body["f"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidArgument("page_token: malformed") from exc
    if fingerprint != _fingerprint(scope, filters) or not isinstance(key, list):
        raise InvalidArgument("page_token: issued for a different request")
    return key
