"""Every maximum of the kanban API, in one place, enforced the same on every database.

SQLite does not enforce column lengths and PostgreSQL rejects NUL characters
with an error the client would see as INTERNAL, so limits are checked on the
request before any handler runs: :func:`enforced` wraps every RPC of a
servicer with :func:`check_request`, which walks the request by its
descriptor. Each string, list and map has a maximum here (by field name, else
a default), every Duration a range. The same numbers are written in the
``.proto`` comments; a violation is INVALID_ARGUMENT naming the field and the
maximum (a Duration past its range is OUT_OF_RANGE), and quotes no more than
:data:`~services.runtime.errors.QUOTE_CHARS` of a value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from services.runtime.errors import InvalidArgument, OutOfRange, quote

KIB = 1024
#: A List response stops before it would exceed this many bytes (the gRPC
#: message limit is 4 MiB; one row is at most ~0.5 MiB by the limits below).
PAGE_BYTES = 1024 * KIB
#: Longest page token accepted (ours are under 300 characters).
PAGE_TOKEN_CHARS = 1024
#: Longest Duration accepted anywhere (a year; ``now + 2^62 s`` overflows).
MAX_DURATION_SECONDS = 366 * 86400
#: Most bytes one GetRunOutput returns (0 asks for this much).
OUTPUT_READ_BYTES = 1024 * KIB
#: Largest output offset accepted (far past any output cap; keeps sums in 64 bits).
MAX_OUTPUT_OFFSET = 2**53
#: Largest serialized event payload; longer strings in it are cut first.
EVENT_PAYLOAD_BYTES = 16 * KIB


@dataclass(frozen=True)
class Text:
    """The maximum of one string field.

    Attributes:
        size: Largest length.
        unit: ``"characters"`` or ``"bytes"`` (UTF-8).
    """

    size: int
    unit: str = "characters"

    def measure(self, value: str) -> int:
        """Return the length of ``value`` in this limit's unit."""
        return len(value.encode()) if self.unit == "bytes" else len(value)


@dataclass(frozen=True)
class Many:
    """The maximum of a repeated field or a map.

    Attributes:
        count: Most elements (entries).
        item: Limit of each string element (map value).
        key: Limit of each map key.
        total_bytes: Most UTF-8 bytes over all elements (keys and values); 0 = none.
    """

    count: int
    item: Text
    key: Text = Text(256)
    total_bytes: int = 0


ID = Text(64)
NAME = Text(63)
LABEL = Text(200)

#: Strings by field name (the same name means the same thing in every message).
TEXTS: Mapping[str, Text] = {
    "board_id": NAME,
    "name": NAME,
    "profile": NAME,
    "assignee": NAME,
    "task_id": ID,
    "run_id": ID,
    "parent_id": ID,
    "child_id": ID,
    "comment_id": ID,
    "display_name": LABEL,
    "title": LABEL,
    "author": LABEL,
    "worker_id": LABEL,
    "image": Text(255),  # the longest image reference Docker accepts
    "description": Text(64 * KIB, "bytes"),
    "body": Text(64 * KIB, "bytes"),
    "reason": Text(4 * KIB, "bytes"),
    "blocked_reason": Text(4 * KIB, "bytes"),
    "summary": Text(16 * KIB, "bytes"),
    "error": Text(16 * KIB, "bytes"),
    "request_id": Text(128),
    "page_token": Text(PAGE_TOKEN_CHARS),
    "sandbox_token": Text(4 * KIB),
}
#: Repeated fields and maps by field name.
MANY: Mapping[str, Many] = {
    "command": Many(256, Text(32 * KIB, "bytes"), total_bytes=128 * KIB),
    "env": Many(128, Text(32 * KIB, "bytes"), key=Text(256), total_bytes=256 * KIB),
    "labels": Many(64, Text(256), key=Text(63)),
    "parent_ids": Many(100, ID),
    "allowed_images": Many(32, Text(255)),
    "statuses": Many(16, ID),
    "paths": Many(32, Text(64)),
}
#: Any other string, list, map or bytes field.
DEFAULT_TEXT = Text(64 * KIB, "bytes")
DEFAULT_MANY = Many(256, DEFAULT_TEXT, total_bytes=1024 * KIB)
MAX_BYTES = 1024 * KIB

_DURATION = "google.protobuf.Duration"


def _text(name: str, value: str, limit: Text) -> None:
    size = limit.measure(value)
    if size > limit.size:
        raise InvalidArgument(f"{name}: at most {limit.size} {limit.unit} (got {size})")
    if "\x00" in value:
        raise InvalidArgument(f"{name}: must not contain NUL characters")


def _duration(name: str, value: Message) -> None:
    seconds = int(getattr(value, "seconds", 0))
    nanos = int(getattr(value, "nanos", 0))
    if not -999_999_999 <= nanos <= 999_999_999 or (
        seconds and nanos and (seconds < 0) != (nanos < 0)
    ):
        raise InvalidArgument(f"{name}: nanos {nanos} out of range for seconds {seconds}")
    if seconds > MAX_DURATION_SECONDS:
        raise OutOfRange(f"{name}: at most {MAX_DURATION_SECONDS} seconds (got {seconds})")
    if seconds < -MAX_DURATION_SECONDS:
        raise OutOfRange(f"{name}: must not be negative (got {seconds} seconds)")


def _items(name: str, values: Iterable[Any], field: FieldDescriptor, limit: Many) -> None:
    total = 0
    for index, item in enumerate(values):
        if index >= limit.count:
            raise InvalidArgument(f"{name}: at most {limit.count} elements")
        element = f"{name}[{index}]"
        if isinstance(item, str):
            _text(element, item, limit.item)
            total += len(item.encode())
        elif isinstance(item, bytes):
            if len(item) > MAX_BYTES:
                raise InvalidArgument(f"{element}: at most {MAX_BYTES} bytes")
            total += len(item)
        elif isinstance(item, Message):
            _check(item, f"{element}.")
        if limit.total_bytes and total > limit.total_bytes:
            raise InvalidArgument(f"{name}: at most {limit.total_bytes} bytes in all")


def _map(name: str, values: Mapping[Any, Any], field: FieldDescriptor, limit: Many) -> None:
    if len(values) > limit.count:
        raise InvalidArgument(f"{name}: at most {limit.count} entries (got {len(values)})")
    total = 0
    for key, value in values.items():
        if isinstance(key, str):
            _text(f"{name} key {quote(key, 40)}", key, limit.key)
            total += len(key.encode())
        entry = f"{name}[{quote(key, 40)}]"
        if isinstance(value, str):
            _text(entry, value, limit.item)
            total += len(value.encode())
        elif isinstance(value, Message):
            _check(value, f"{entry}.")
        if limit.total_bytes and total > limit.total_bytes:
            raise InvalidArgument(f"{name}: at most {limit.total_bytes} bytes in all")


def _check(message: Message, prefix: str) -> None:
    for field, value in message.ListFields():
        name = prefix + field.name
        many = MANY.get(field.name, DEFAULT_MANY)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _map(name, value, field, many)
        elif field.is_repeated:
            _items(name, value, field, many)
        elif field.type == FieldDescriptor.TYPE_STRING:
            _text(name, value, TEXTS.get(field.name, DEFAULT_TEXT))
        elif field.type == FieldDescriptor.TYPE_BYTES:
            if len(value) > MAX_BYTES:
                raise InvalidArgument(f"{name}: at most {MAX_BYTES} bytes (got {len(value)})")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is not None and field.message_type.full_name == _DURATION:
                _duration(name, value)
            else:
                _check(value, name + ".")


def check_request(request: Message) -> None:
    """Check every field of ``request`` against its maximum.

    Raises:
        InvalidArgument: A string, list or map is too long, or a string holds NUL.
        OutOfRange: A Duration is longer than :data:`MAX_DURATION_SECONDS`.
    """
    _check(request, "")


def check_page_token(token: str) -> None:
    """Check a page token's length (the token's fields are checked on decode).

    Raises:
        InvalidArgument: The token is longer than :data:`PAGE_TOKEN_CHARS`.
    """
    _text("page_token", token, TEXTS["page_token"])


S = TypeVar("S", bound=type)


def enforced(service: ServiceDescriptor) -> Callable[[S], S]:
    """Class decorator: every RPC of ``service`` checks its request first.

    Args:
        service: The service descriptor whose methods the class implements.

    Returns:
        A decorator returning the class with each RPC method wrapped.
    """

    def decorate(cls: S) -> S:
        for method in service.methods:
            original = getattr(cls, method.name, None)
            if original is None or method.client_streaming:
                continue
            setattr(cls, method.name, _checked(original))
        return cls

    return decorate


def _checked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(self: Any, request: Message, context: Any) -> Any:
        check_request(request)
        return method(self, request, context)

    return wrapper
