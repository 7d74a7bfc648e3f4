"""The front door's settings: the ``e2b`` section and the gateway peer."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.e2b.tokens import MIN_SECRET_CHARS
from services.runtime.config import BaseSettings, PeerSection


@dataclass(frozen=True)
class E2bSection:
    """Settings of the E2B-compatible front door (``LONGSHORE_E2B_*``)."""

    listen: str = field(
        default="127.0.0.1:3000",
        metadata={"help": "host:port the front door binds (E2B_API_URL and E2B_SANDBOX_URL)."},
    )
    default_template: str = field(
        default="",
        metadata={
            "help": "Profile that E2B's default template 'base' maps to; empty refuses 'base'."
        },
    )
    board_id: str = field(
        default="",
        metadata={"help": "Board the front door's tasks go on; empty = kanban's default board."},
    )
    default_timeout_seconds: int = field(
        default=300, metadata={"help": "Sandbox timeout when a create names none (E2B's 300 s)."}
    )
    max_timeout_seconds: int = field(
        default=24 * 3600, metadata={"help": "Longest timeout a create or set_timeout may ask."}
    )
    max_upload_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"help": "Largest file one upload may write."}
    )
    max_listed: int = field(
        default=1000, metadata={"help": "Most sandboxes one list answers with."}
    )
    call_timeout_seconds: float = field(
        default=30.0, metadata={"help": "Deadline of each unary gateway call."}
    )
    token_secret: str = field(
        default="",
        metadata={
            "help": "Secret (>= 32 characters) the envd access tokens are sealed under "
            "(AES-GCM); every front-door replica must share it. Empty = a random one per "
            "process: its tokens end with a restart."
        },
    )
    keep_alive_seconds: int = field(
        default=5, metadata={"help": "An idle HTTP connection closes after this."}
    )

    def __post_init__(self) -> None:
        if self.token_secret and len(self.token_secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"e2b.token_secret: at least {MIN_SECRET_CHARS} characters, "
                f"got {len(self.token_secret)}"
            )


def _default_gateway() -> PeerSection:
    return PeerSection(addr="127.0.0.1:50051")


@dataclass(frozen=True)
class E2bSettings(BaseSettings):
    """Everything the front door process reads at start."""

    e2b: E2bSection = field(default_factory=E2bSection)
    gateway: PeerSection = field(default_factory=_default_gateway)
