"""Which API-key scope each RPC the gateway serves needs.

Every method of every forwarded service must appear here: the gateway refuses
to start otherwise (see :func:`check_complete`), so a new RPC is never
accidentally open or accidentally closed. A method accepts any of its listed
scopes; ``admin`` is accepted everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable

SCOPES = frozenset({"read", "write", "worker", "admin"})

_SANDBOX = "/longshore.sandbox.v1.SandboxService/"
_KANBAN = "/longshore.kanban.v1.KanbanService/"
_WORKER = "/longshore.kanban.v1.WorkerService/"
_GATEWAY = "/longshore.gateway.v1.GatewayService/"

READ = ("read",)
WRITE = ("write",)
ADMIN = ("admin",)
WORKER = ("worker",)
# External workers acquire sandboxes and exec in them; so do operators.
SANDBOX_USE = ("write", "worker")

METHOD_SCOPES: dict[str, tuple[str, ...]] = {
    _GATEWAY + "GetStatus": READ,
    # SandboxService
    _SANDBOX + "GetSandbox": READ,
    _SANDBOX + "ListSandboxes": READ,
    _SANDBOX + "AcquireSandbox": SANDBOX_USE,
    _SANDBOX + "Exec": SANDBOX_USE,
    _SANDBOX + "ReleaseSandbox": SANDBOX_USE,
    # Files are Exec's power (a file write is a command's write): Exec's scopes.
    _SANDBOX + "WriteFiles": SANDBOX_USE,
    _SANDBOX + "ReadFile": SANDBOX_USE,
    _SANDBOX + "ListDirectory": SANDBOX_USE,
    _SANDBOX + "StatPath": SANDBOX_USE,
    _SANDBOX + "MakeDirectory": SANDBOX_USE,
    _SANDBOX + "MovePath": SANDBOX_USE,
    _SANDBOX + "RemovePath": SANDBOX_USE,
    # Sessions and processes run commands: Exec's scopes.
    _SANDBOX + "OpenSession": SANDBOX_USE,
    _SANDBOX + "RunSessionCommand": SANDBOX_USE,
    _SANDBOX + "CloseSession": SANDBOX_USE,
    _SANDBOX + "ListSessions": SANDBOX_USE,
    _SANDBOX + "RunProcess": SANDBOX_USE,
    _SANDBOX + "StartProcess": SANDBOX_USE,
    _SANDBOX + "ConnectProcess": SANDBOX_USE,
    _SANDBOX + "ListProcesses": SANDBOX_USE,
    _SANDBOX + "SendProcessInput": SANDBOX_USE,
    _SANDBOX + "SignalProcess": SANDBOX_USE,
    _SANDBOX + "ResizeProcess": SANDBOX_USE,
    # A warm pool spends the deployment's capacity: operators set it.
    _SANDBOX + "SetWarmPool": ADMIN,
    _SANDBOX + "ListWarmPools": READ,
    # Pausing, snapshotting and leasing one's own sandbox is using it.
    _SANDBOX + "PauseSandbox": SANDBOX_USE,
    _SANDBOX + "ResumeSandbox": SANDBOX_USE,
    _SANDBOX + "SnapshotSandbox": SANDBOX_USE,
    _SANDBOX + "ListSnapshots": READ,
    _SANDBOX + "DeleteSnapshot": ADMIN,
    _SANDBOX + "SetSandboxLease": SANDBOX_USE,
    _SANDBOX + "ReapOrphans": ADMIN,
    # Validating a spec is part of writing profiles (kanban calls it directly).
    _SANDBOX + "CheckSandboxSpec": ADMIN,
    # KanbanService: boards and profiles shape the deployment -> admin.
    _KANBAN + "CreateBoard": ADMIN,
    _KANBAN + "GetBoard": READ,
    _KANBAN + "ListBoards": READ,
    _KANBAN + "DeleteBoard": ADMIN,
    _KANBAN + "CreateProfile": ADMIN,
    _KANBAN + "GetProfile": READ,
    _KANBAN + "ListProfiles": READ,
    _KANBAN + "UpdateProfile": ADMIN,
    _KANBAN + "DeleteProfile": ADMIN,
    # KanbanService: tasks.
    _KANBAN + "CreateTask": WRITE,
    _KANBAN + "GetTask": READ,
    _KANBAN + "ListTasks": READ,
    _KANBAN + "UpdateTask": WRITE,
    _KANBAN + "DeleteTask": WRITE,
    _KANBAN + "MoveTask": WRITE,
    _KANBAN + "AssignTask": WRITE,
    _KANBAN + "BlockTask": WRITE,
    _KANBAN + "UnblockTask": WRITE,
    _KANBAN + "LinkTasks": WRITE,
    _KANBAN + "UnlinkTasks": WRITE,
    _KANBAN + "ExplainTask": READ,
    _KANBAN + "AddComment": WRITE,
    _KANBAN + "ListComments": READ,
    _KANBAN + "ListTaskEvents": READ,
    _KANBAN + "WatchEvents": READ,
    _KANBAN + "ListTaskRuns": READ,
    _KANBAN + "GetRunOutput": READ,
    _KANBAN + "StreamRunOutput": READ,
    _KANBAN + "Dispatch": WRITE,
    # WorkerService
    # With `create` kanban also asks for `write` (a field's power, checked there).
    _WORKER + "ClaimTask": WORKER,
    _WORKER + "Heartbeat": WORKER,
    _WORKER + "AppendOutput": WORKER,
    _WORKER + "CompleteTask": WORKER,
    _WORKER + "FailTask": WORKER,
}


def required_scopes(method: str) -> tuple[str, ...]:
    """Return the scopes that admit a call of ``method``.

    A method missing from the table needs ``admin`` (closed by default).
    """
    return METHOD_SCOPES.get(method, ADMIN)


def check_complete(methods: Iterable[str]) -> None:
    """Fail unless every served method has an entry in :data:`METHOD_SCOPES`.

    Raises:
        RuntimeError: Naming the methods without an entry.
    """
    missing = sorted(set(methods) - METHOD_SCOPES.keys())
    if missing:
        raise RuntimeError(f"no scope declared for {', '.join(missing)}")
