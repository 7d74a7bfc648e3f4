"""Opaque page tokens, page sizes and byte-bounded pages for every List call.

A token is URL-safe base64 of JSON carrying the last row's sort key and a
fingerprint of the request's filters, so a token replayed with other filters
is INVALID_ARGUMENT rather than a silently wrong page. Tokens are not trusted:
:func:`decode_token` checks the key field by field against the shape the List
call expects (an int in 64 bits, an aware timestamp, a short string without
NUL), so a forged token is INVALID_ARGUMENT ``page_token: …`` and never
reaches the database as a value it would refuse.

A page holds at most ``page_size`` rows and at most a byte budget
(:data:`~services.kanban.limits.PAGE_BYTES`): :func:`fill` stops before the
row that would cross it, and the token resumes exactly after the last row
sent, so no row is lost or repeated.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from services.kanban import limits
from services.runtime.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: Bytes a repeated message field adds around each element (tag + length).
_ELEMENT_OVERHEAD = 6
_INT64 = 2**63
_KEY_CHARS = 200

#: The kinds of sort-key element a token may carry.
INT = "int"
TIME = "time"
STR = "str"

Row = TypeVar("Row")
Msg = TypeVar("Msg", bound=Message)


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


def _wire(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def encode_token(scope: str, filters: Any, key: Sequence[Any]) -> str:
    """Return an opaque token resuming after ``key`` for this scope and filters.

    Args:
        scope: Which List call (``"tasks"``, ``"events"``, ...).
        filters: The request's filters; a token only fits the same ones.
        key: The last row's sort key (ints, aware datetimes, strings).
    """
    body = json.dumps(
        {"f": _fingerprint(scope, filters), "k": [_wire(v) for v in key]}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def _element(value: Any, kind: str) -> Any:
    if kind == INT:
        if isinstance(value, bool) or not isinstance(value, int) or not -_INT64 <= value < _INT64:
            raise InvalidArgument("page_token: malformed (bad sort key)")
        return value
    if kind == TIME:
        if not isinstance(value, str) or len(value) > 40:
            raise InvalidArgument("page_token: malformed (bad sort key)")
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidArgument("page_token: malformed (bad sort key)") from exc
        if parsed.tzinfo is None:
            raise InvalidArgument("page_token: malformed (bad sort key)")
        return parsed
    if not isinstance(value, str) or len(value) > _KEY_CHARS or "\x00" in value:
        raise InvalidArgument("page_token: malformed (bad sort key)")
    return value


def decode_token(
    token: str, scope: str, filters: Any, kinds: Sequence[str]
) -> tuple[Any, ...] | None:
    """Return the sort key a token resumes after, or None for an empty token.

    Args:
        token: The request's ``page_token``.
        scope: The List call, as passed to :func:`encode_token`.
        filters: The request's filters, as passed to :func:`encode_token`.
        kinds: The expected key: one of :data:`INT`, :data:`TIME`, :data:`STR` per element.

    Returns:
        The key with each element converted (datetimes parsed), or None.

    Raises:
        InvalidArgument: The token is malformed, forged or was issued for other filters.
    """
    if not token:
        return None
    limits.check_page_token(token)
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
        key = body["k"]
        fingerprint = body["f"]
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError) as exc:
        raise InvalidArgument("page_token: malformed") from exc
    if fingerprint != _fingerprint(scope, filters):
        raise InvalidArgument("page_token: issued for a different request")
    if not isinstance(key, list) or len(key) != len(kinds):
        raise InvalidArgument("page_token: malformed (bad sort key)")
    return tuple(_element(v, kind) for v, kind in zip(key, kinds, strict=True))


@dataclass
class Page(Generic[Row, Msg]):
    """One page: the messages to send and the row the next page resumes after.

    Attributes:
        messages: The page's messages, in order.
        last: The last row sent, when a next page exists; else None.
    """

    messages: list[Msg]
    last: Row | None


def fill(
    rows: Sequence[Row],
    size: int,
    to_message: Callable[[Row], Msg],
    *,
    budget: int = limits.PAGE_BYTES,
) -> Page[Row, Msg]:
    """Convert rows into a page of at most ``size`` rows and ``budget`` bytes.

    Args:
        rows: Up to ``size + 1`` rows in order (one more tells a next page exists).
        size: Most rows on the page.
        to_message: Converts one row.
        budget: Most serialized bytes of the page's messages; the first row is
            always sent (one row is bounded by the field limits), so every page
            makes progress.

    Returns:
        The page, with ``last`` set when rows remain after it.
    """
    messages: list[Msg] = []
    used = 0
    for index, row in enumerate(rows):
        if index == size:
            return Page(messages, rows[index - 1])
        message = to_message(row)
        cost = message.ByteSize() + _ELEMENT_OVERHEAD
        if messages and used + cost > budget:
            return Page(messages, rows[index - 1])
        messages.append(message)
        used += cost
    return Page(messages, None)
