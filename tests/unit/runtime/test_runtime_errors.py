"""Client errors stay precise: quoted values are short, statuses capped, bad bytes refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2

from services.runtime.aio_serving import AioService
from services.runtime.errors import (
    MAX_STATUS_MESSAGE_CHARS,
    InvalidArgument,
    NotFound,
    clip_message,
    quote,
)
from services.runtime.testing import RunningServer, serve_in_process

ECHO = "/longshore.test.Echo/Fail"


def test_quote_keeps_short_values_and_cuts_long_ones() -> None:
    assert quote("abc") == "'abc'"
    long = quote("x" * 1_000_000)
    assert long.startswith("'" + "x" * 100 + "'")
    assert "1000000 chars" in long
    assert len(long) < 140
    assert len(quote(b"y" * 5000)) < 140
    assert len(quote(["z" * 500])) <= 103


def test_clip_message_caps_at_the_limit() -> None:
    assert clip_message("short") == "short"
    assert len(clip_message("m" * 50_000)) == MAX_STATUS_MESSAGE_CHARS


async def _fail(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
    # A careless handler echoing a 1 MB value: the interceptor must still cap it.
    raise NotFound("thing " + request.decode(errors="replace") + " not found")


def _echo_service() -> AioService:
    handler = grpc.method_handlers_generic_handler(
        "longshore.test.Echo",
        {"Fail": grpc.unary_unary_rpc_method_handler(_fail)},
    )
    return AioService("longshore.test.Echo", lambda s: s.add_generic_rpc_handlers((handler,)))


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with serve_in_process([_echo_service()]) as running:
        yield running


def _raw(server: RunningServer, method: str, payload: bytes) -> grpc.RpcError:
    channel = server.channel()
    call: Any = channel.unary_unary(method)
    with pytest.raises(grpc.RpcError) as info:
        call(payload, timeout=30)
    channel.close()
    return info.value


def test_a_huge_message_is_capped_not_an_overflow(server: RunningServer) -> None:
    error: Any = _raw(server, ECHO, b"i" * 1_000_000)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert len(error.details()) <= MAX_STATUS_MESSAGE_CHARS


def test_malformed_request_bytes_are_invalid_argument(server: RunningServer) -> None:
    error: Any = _raw(server, "/grpc.health.v1.Health/Check", b"\xff\xff\xff\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "request: malformed HealthCheckRequest bytes"


def test_well_formed_requests_still_parse(server: RunningServer) -> None:
    channel = server.channel()
    call: Any = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    response = call(health_pb2.HealthCheckRequest(service=""), timeout=30)
    channel.close()
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_service_errors_keep_their_code() -> None:
    assert InvalidArgument("x").code == grpc.StatusCode.INVALID_ARGUMENT


def test_an_unserved_rpc_of_the_contract_is_unimplemented_not_internal() -> None:
    from services.runtime.interceptors import status_of

    code, message = status_of(NotImplementedError("Method not implemented!"), "/x.v1.S/M")
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "/x.v1.S/M" in message
