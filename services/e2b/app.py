"""The front door's one ASGI application: REST, ``/files``, envd's Connect services.

Requests are told apart by path: envd's Connect services live under their
service names (``/process.Process/...``, ``/filesystem.Filesystem/...``) and
are served by the Connect ASGI applications generated in the pinned SDK (the
wire contract: E2B's own envd protos); everything else goes to the Starlette
router (the control plane, ``/files``, ``/health``).
"""

from __future__ import annotations

from dataclasses import dataclass

from e2b.envd.filesystem.filesystem_connect import FilesystemASGIApplication
from e2b.envd.process.process_connect import ProcessASGIApplication
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from services.e2b.control import ControlPlane
from services.e2b.filesystem import FilesystemService
from services.e2b.gateway import Gateway
from services.e2b.keeper import Keeper
from services.e2b.processes import ProcessService
from services.e2b.sandboxes import Sandboxes
from services.e2b.settings import E2bSection
from services.e2b.tokens import Sealer
from services.e2b.transfers import Transfers

#: Largest Connect request message (a process start, a list request).
MAX_CONNECT_MESSAGE_BYTES = 1024 * 1024


async def health(_request: Request) -> Response:
    """envd's health check: 204."""
    return Response(status_code=204)


@dataclass
class FrontDoor:
    """The assembled application and what it owns."""

    gateway: Gateway
    keeper: Keeper
    sandboxes: Sandboxes
    asgi: ASGIApp

    async def close(self) -> None:
        """Stops the keeper and closes the gateway channel (on the serving loop)."""
        await self.keeper.close()
        await self.gateway.close()


def build_front_door(gateway_addr: str, section: E2bSection) -> FrontDoor:
    """The front door's application over the gateway at ``gateway_addr``."""
    gateway = Gateway(gateway_addr, timeout=section.call_timeout_seconds)
    keeper = Keeper(gateway)
    sandboxes = Sandboxes(gateway, section, keeper, Sealer(section.token_secret))
    control = ControlPlane(sandboxes)
    transfers = Transfers(gateway, sandboxes, max_upload_bytes=section.max_upload_bytes)
    rest = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            *transfers.routes(),
            *control.routes(),
        ]
    )
    process = ProcessASGIApplication(
        ProcessService(gateway, sandboxes), read_max_bytes=MAX_CONNECT_MESSAGE_BYTES
    )
    filesystem = FilesystemASGIApplication(
        FilesystemService(gateway, sandboxes), read_max_bytes=MAX_CONNECT_MESSAGE_BYTES
    )

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if path.startswith(process.path + "/"):
            await process(scope, receive, send)
        elif path.startswith(filesystem.path + "/"):
            await filesystem(scope, receive, send)
        else:
            await rest(scope, receive, send)

    return FrontDoor(gateway, keeper, sandboxes, route)
