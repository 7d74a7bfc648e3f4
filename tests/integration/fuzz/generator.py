"""Random and boundary requests built from protobuf descriptors, and malformed bytes.

Every field of a request message gets a value drawn from its type: empty and
huge strings (1 MB ids), NUL and non-ASCII text, forged page tokens, the
stack's real ids (so calls get past NOT_FOUND), negative and huge integers,
NaN and infinities, unknown enum values, Durations of 2^62 s and bad nanos,
long lists and wide maps, nested messages. Nothing here decides what a
server must answer; the test asserts only that it is never INTERNAL/UNKNOWN.
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

HUGE = 1_000_000
_INT_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


@dataclass
class Vocabulary:
    """Values worth sending besides random ones: the stack's real ids and names."""

    ids: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


def _forged_token(rng: random.Random) -> str:
    choices: list[object] = [
        {"f": "0" * 12, "k": [1, "x", "t"]},
        {"f": "", "k": [2**80, "2024-13-45T99:00:00", "\x00"]},
        {"k": "not a list"},
        [1, 2, 3],
        {"f": "abc", "k": [[[[[]]]]]},
        {"f": None, "k": [None, None, None]},
    ]
    body = json.dumps(rng.choice(choices)).encode()
    if rng.random() < 0.3:
        return base64.b64encode(rng.randbytes(rng.randint(1, 64))).decode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


class Generator:
    """Builds random requests for message descriptors.

    Args:
        rng: The seeded source of randomness (every value derives from it).
        vocabulary: Real ids and images to mix in.
    """

    def __init__(self, rng: random.Random, vocabulary: Vocabulary) -> None:
        self.rng = rng
        self.vocabulary = vocabulary
        self._huge_budget = 0

    def string(self, name: str) -> str:
        """A value for a string field called ``name``."""
        rng = self.rng
        roll = rng.random()
        if name == "page_token" and roll < 0.6:
            return _forged_token(rng)
        if name == "image" and roll < 0.5 and self.vocabulary.images:
            return rng.choice(self.vocabulary.images)
        if roll < 0.3 and self.vocabulary.ids:
            return rng.choice(self.vocabulary.ids)
        if roll < 0.34 and self._huge_budget > 0:
            self._huge_budget -= 1
            return rng.choice("ab-_") * HUGE
        return rng.choice(
            [
                "",
                "a",
                "default",
                " ",
                "x" * 64,
                "y" * 65,
                "z" * 300,
                "w" * 70_000,
                "nul\x00inside",
                "ünïcødé ✓ 🚀",
                "<redacted>",
                "../../etc/passwd",
                "UPPER_case.9",
                "-leading-dash",
                "%s%n{}",
                str(rng.randint(-(10**6), 10**6)),
                "".join(rng.choice("abcdefgh-_.0123") for _ in range(rng.randint(1, 40))),
            ]
        )

    def integer(self, kind: int) -> int:
        """A value for an integer field of protobuf type ``kind``."""
        low, high = _INT_BOUNDS[kind]
        candidates = [0, 1, -1, 2, 100, 1000, 2**31 - 1, -(2**31), 2**62, 2**63 - 1, low, high]
        value = self.rng.choice([*candidates, self.rng.randint(low, high)])
        return max(low, min(high, value))

    def floating(self) -> float:
        """A value for a float or double field."""
        return self.rng.choice(
            [0.0, -1.0, 0.5, 1.0, 1e308, -1e308, math.nan, math.inf, -math.inf, 2.0**62]
        )

    def scalar(self, f: FieldDescriptor) -> object:
        """A value for one scalar (or enum) field."""
        t = f.type
        if t == FieldDescriptor.TYPE_STRING:
            return self.string(f.name)
        if t == FieldDescriptor.TYPE_BYTES:
            return self.rng.choice([b"", b"x", self.rng.randbytes(64), b"\x00" * 70_000])
        if t == FieldDescriptor.TYPE_BOOL:
            return self.rng.random() < 0.5
        if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return self.floating()
        if t == FieldDescriptor.TYPE_ENUM:
            assert f.enum_type is not None
            known = [v.number for v in f.enum_type.values]
            return self.rng.choice([*known, -1, 99, 2**31 - 1])
        return self.integer(t)

    def fill(self, msg: Message, depth: int = 0) -> Message:
        """Set a random subset of ``msg``'s fields (nested up to 4 levels)."""
        descriptor: Descriptor = msg.DESCRIPTOR
        full = descriptor.full_name
        if full in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
            seconds = self.rng.choice([0, 1, -1, 60, 2**62, -(2**62), 315_576_000_001, 10**9])
            nanos = self.rng.choice([0, 1, -1, 999_999_999, 1_000_000_005, -(2**31)])
            msg.seconds = seconds  # type: ignore[attr-defined]
            msg.nanos = nanos  # type: ignore[attr-defined]
            return msg
        if full == "google.protobuf.FieldMask":
            names = [self.string("path") for _ in range(self.rng.randint(0, 3))]
            names += self.rng.sample(
                ["title", "env", "image", "sandbox_spec", "labels", "max_runtime", "executor"],
                k=self.rng.randint(0, 3),
            )
            msg.paths.extend(names)  # type: ignore[attr-defined]
            return msg
        for f in descriptor.fields:
            if self.rng.random() < 0.35:
                continue
            self._set(msg, f, depth)
        return msg

    def _count(self) -> int:
        return self.rng.choice([0, 1, 2, 3, 3, 150, 300])

    def _set(self, msg: Message, f: FieldDescriptor, depth: int) -> None:
        target = getattr(msg, f.name)
        mt = f.message_type
        if mt is not None and mt.GetOptions().map_entry:
            key_f, value_f = mt.fields_by_name["key"], mt.fields_by_name["value"]
            for _ in range(self._count()):
                key = self.scalar(key_f)
                if value_f.message_type is not None:
                    if depth < 4:
                        self.fill(target[key], depth + 1)
                else:
                    target[key] = self.scalar(value_f)
            return
        if f.is_repeated:
            for _ in range(self._count()):
                if mt is not None:
                    if depth < 4:
                        self.fill(target.add(), depth + 1)
                else:
                    target.append(self.scalar(f))
            return
        if mt is not None:
            if depth < 4:
                self.fill(target, depth + 1)
            return
        setattr(msg, f.name, self.scalar(f))

    def request(self, descriptor: Descriptor) -> Message:
        """A random request of type ``descriptor`` (at most one 1 MB string in it)."""
        self._huge_budget = 1
        cls = message_factory.GetMessageClass(descriptor)
        return self.fill(cls())


def malformed(rng: random.Random, valid: Sequence[bytes]) -> bytes:
    """Bytes that are not a valid encoding of any message (or nest far too deep)."""
    choice = rng.randrange(6)
    if choice == 0:
        return b"\xff" * rng.randint(1, 32)  # invalid wire type
    if choice == 1 and valid:
        whole = rng.choice([v for v in valid if len(v) > 2] or [b"\x0a\x05abc"])
        return whole[: rng.randint(1, len(whole) - 1)]  # truncated
    if choice == 2:
        return b"\x0a" + b"\xff\xff\xff\xff\x0f"  # length far past the end
    if choice == 3:
        # A field 1 group/message nested 500 deep: past every parser's recursion limit.
        data = b""
        for _ in range(500):
            data = b"\x0a" + _varint(len(data)) + data
        return data
    if choice == 4:
        return b"\x0a\x03\xff\xfe\xfd"  # a string field that is not UTF-8
    return rng.randbytes(rng.randint(1, 256))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
