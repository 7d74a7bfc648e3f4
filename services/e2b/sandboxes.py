"""E2B sandboxes as Longshore sees them: a kanban task, its run and its sandbox.

An E2B create is an external worker's claim, so profile caps and hardening
apply exactly as to any other work:

* the template names a profile (executor ``external``); ``base`` is
  ``e2b.default_template``;
* a task is created for that profile (metadata become its labels, env vars
  its env), claimed by id (``ClaimTask.task_id``) with the caller's key, and
  its sandbox acquired with the run's sandbox token;
* the E2B timeout is the sandbox's lease (expiry: remove), and the
  :class:`~services.e2b.keeper.Keeper` heartbeats the run until then;
* kill releases the sandbox and completes the task.

The E2B sandbox id is the task id. Every call acts as its caller: the
gateway checks the key's scopes, kanban that the key holds the run, the
manager that the token is the run's.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import duration_pb2
from longshore.kanban.v1 import kanban_service_pb2 as kpb
from longshore.kanban.v1 import task_pb2
from longshore.kanban.v1 import worker_service_pb2 as wpb
from longshore.sandbox.v1 import lifecycle_pb2 as lpb
from longshore.sandbox.v1 import sandbox_pb2
from longshore.sandbox.v1 import sandbox_service_pb2 as spb

from services.e2b import tokens
from services.e2b.gateway import Caller, Gateway
from services.e2b.keeper import Keeper
from services.e2b.settings import E2bSection
from services.runtime.errors import InvalidArgument, NotFound

#: The envd version the front door speaks (the SDK gates features on it).
ENVD_VERSION = "0.5.7"
#: Label marking a task as an E2B sandbox; metadata keys follow META_PREFIX.
MARK = "e2b"
META_PREFIX = "e2b."
WORKER_ID = "e2b-front-door"
DEFAULT_TEMPLATE = "base"
_META_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,54}$")
MAX_METADATA = 32
MAX_META_VALUE = 256
MAX_ENV = 64


def _lease_terms(timeout: int) -> sandbox_pb2.LeaseTerms:
    """An E2B timeout as a lease: at expiry the sandbox goes (E2B kills it)."""
    return sandbox_pb2.LeaseTerms(
        ttl=duration_pb2.Duration(seconds=timeout), on_expiry=sandbox_pb2.LEASE_EXPIRY_REMOVE
    )


@dataclass(frozen=True)
class Held:
    """A live E2B sandbox as its caller may use it."""

    task: task_pb2.Task
    run_id: str
    caller: Caller
    sandbox: sandbox_pb2.Sandbox


def metadata_labels(metadata: Mapping[str, str]) -> dict[str, str]:
    """E2B metadata as task labels (``e2b.<key>``), checked and bounded.

    Raises:
        InvalidArgument: Too many entries, or a key or value out of bounds.
    """
    if len(metadata) > MAX_METADATA:
        raise InvalidArgument(f"metadata: at most {MAX_METADATA} entries")
    labels = {MARK: "sandbox"}
    for key, value in metadata.items():
        if not isinstance(key, str) or not _META_KEY.match(key):
            raise InvalidArgument(
                f"metadata: key {str(key)[:60]!r} must be 1-54 characters of [A-Za-z0-9_.-]"
            )
        if not isinstance(value, str) or len(value) > MAX_META_VALUE:
            raise InvalidArgument(f"metadata[{key}]: a string of at most {MAX_META_VALUE} chars")
        labels[META_PREFIX + key] = value
    return labels


def metadata_of(task: task_pb2.Task) -> dict[str, str]:
    """The E2B metadata stored in a task's labels."""
    return {k[len(META_PREFIX) :]: v for k, v in task.labels.items() if k.startswith(META_PREFIX)}


def _iso(ts: Any) -> str | None:
    if ts is None or not (ts.seconds or ts.nanos):
        return None
    return str(ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _state(sandbox: sandbox_pb2.Sandbox) -> str:
    return "paused" if sandbox.state == sandbox_pb2.SANDBOX_STATE_PAUSED else "running"


class Sandboxes:
    """The E2B control plane over the gateway.

    Args:
        gateway: The gateway client.
        section: The front door's settings.
        keeper: Heartbeats the runs this front door created.
    """

    def __init__(
        self, gateway: Gateway, section: E2bSection, keeper: Keeper, sealer: tokens.Sealer
    ) -> None:
        self._gw = gateway
        #: Seals and opens the envd access tokens.
        self.sealer = sealer
        self._section = section
        self.keeper = keeper

    # ---- create ------------------------------------------------------------

    def profile_of(self, template: str) -> str:
        """The profile a template names.

        Raises:
            InvalidArgument: ``base`` without ``e2b.default_template``, or an empty name.
        """
        if template == DEFAULT_TEMPLATE or not template:
            if not self._section.default_template:
                raise InvalidArgument(
                    "templateID: 'base' maps to no profile (e2b.default_template is empty); "
                    "name a profile"
                )
            return self._section.default_template
        return template

    def timeout_of(self, value: object) -> int:
        """A timeout in seconds, bounded by ``e2b.max_timeout_seconds``.

        Raises:
            InvalidArgument: Not a positive integer, or above the maximum.
        """
        if value is None:
            return self._section.default_timeout_seconds
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidArgument("timeout: a positive number of seconds")
        if value > self._section.max_timeout_seconds:
            raise InvalidArgument(
                f"timeout: at most {self._section.max_timeout_seconds} s (e2b.max_timeout_seconds)"
            )
        return value

    async def create(
        self,
        api_key: str,
        template: str,
        *,
        timeout: int,
        metadata: Mapping[str, str],
        env: Mapping[str, str],
    ) -> dict[str, Any]:
        """Creates a sandbox for the caller; returns E2B's ``Sandbox`` body.

        Raises:
            InvalidArgument: Bad metadata or env.
            ResourceExhausted: The front door keeps its most sandboxes.
            grpc.aio.AioRpcError: The gateway's refusal, as it came
                (RESOURCE_EXHAUSTED: the profile is at its cap).
        """
        profile = self.profile_of(template)
        labels = metadata_labels(metadata)
        if len(env) > MAX_ENV:
            raise InvalidArgument(f"envVars: at most {MAX_ENV} entries")
        self.keeper.check_room()
        who = Caller(api_key)
        gw = self._gw
        # One call makes the task and claims it: it is never ready for
        # another worker, and at the cap nothing is made (RESOURCE_EXHAUSTED).
        claim = await gw.worker.ClaimTask(
            wpb.ClaimTaskRequest(
                profile=profile,
                worker_id=WORKER_ID,
                board_id=self._section.board_id,
                create=task_pb2.Task(
                    board_id=self._section.board_id,
                    title=f"E2B sandbox ({template or DEFAULT_TEMPLATE})",
                    env=dict(env),
                    labels=labels,
                ),
            ),
            metadata=who.metadata(),
        )
        task = claim.task
        held = Caller(api_key, claim.sandbox_token)
        try:
            # The lease comes with the acquire: no call of its own, and no
            # moment in which the sandbox has none.
            acquired = await gw.sandbox.AcquireSandbox(
                spb.AcquireSandboxRequest(
                    task_id=task.task_id,
                    profile=profile,
                    spec=claim.sandbox_spec,
                    lease=_lease_terms(timeout),
                ),
                metadata=held.metadata(),
            )
            box = acquired.sandbox
        except BaseException:
            # The run ends as a platform failure (its record and events say
            # so), and the task goes: nothing ever claims it again, and an
            # external worker of the profile must not take a caller's create.
            # The create's own error is what the caller gets, even when these
            # fail too (kanban then reclaims the run at its lease).
            with contextlib.suppress(Exception):
                await gw.worker.FailTask(
                    wpb.FailTaskRequest(
                        run_id=claim.run_id, error="E2B create failed", platform=True
                    ),
                    metadata=who.metadata(),
                )
                await gw.kanban.DeleteTask(
                    kpb.DeleteTaskRequest(task_id=task.task_id), metadata=who.metadata()
                )
            raise
        self.keeper.keep(
            claim.run_id,
            api_key=api_key,
            token=claim.sandbox_token,
            lease_expire=claim.lease_expire_time.ToNanoseconds() / 1e9,
            end=time.time() + timeout,
        )
        return self._created(task.task_id, template, api_key, claim.run_id, box.sandbox_id)

    def _created(
        self, e2b_id: str, template: str, api_key: str, run_id: str, sandbox_id: str
    ) -> dict[str, Any]:
        token = self.sealer.seal(tokens.Access(api_key, run_id, sandbox_id))
        return {
            "templateID": template or DEFAULT_TEMPLATE,
            "sandboxID": e2b_id,
            "clientID": "longshore",
            "envdVersion": ENVD_VERSION,
            "envdAccessToken": token,
            "trafficAccessToken": None,
            "domain": None,
        }

    async def _lease(self, who: Caller, sandbox_id: str, timeout: int) -> None:
        terms = _lease_terms(timeout)
        await self._gw.sandbox.SetSandboxLease(
            lpb.SetSandboxLeaseRequest(
                sandbox_id=sandbox_id, ttl=terms.ttl, on_expiry=terms.on_expiry
            ),
            metadata=who.metadata(),
        )

    # ---- finding one -------------------------------------------------------

    async def _task(self, api_key: str, e2b_id: str) -> task_pb2.Task:
        if not e2b_id or len(e2b_id) > 64:
            raise InvalidArgument("sandboxID: 1-64 characters")
        task = (
            await self._gw.kanban.GetTask(
                kpb.GetTaskRequest(task_id=e2b_id), metadata=Caller(api_key).metadata()
            )
        ).task
        if task.labels.get(MARK) != "sandbox":
            raise NotFound(f"sandbox {e2b_id!r} not found (not an E2B sandbox)")
        return task

    async def _box(self, api_key: str, task_id: str) -> sandbox_pb2.Sandbox | None:
        found = await self._gw.sandbox.ListSandboxes(
            spb.ListSandboxesRequest(task_id=task_id, page_size=10),
            metadata=Caller(api_key).metadata(),
        )
        return found.sandboxes[0] if found.sandboxes else None

    async def token(self, api_key: str, run_id: str) -> str:
        """The run's sandbox token for this caller: kept, or renewed by a heartbeat.

        Raises:
            grpc.aio.AioRpcError: PERMISSION_DENIED when the key does not hold
                the run, FAILED_PRECONDITION when the run ended.
        """
        kept = self.keeper.token_for(run_id, api_key)
        if kept:
            return kept
        beat = await self._gw.worker.Heartbeat(
            wpb.HeartbeatRequest(run_id=run_id), metadata=Caller(api_key).metadata()
        )
        return beat.sandbox_token

    async def hold(self, api_key: str, e2b_id: str) -> Held:
        """The live sandbox ``e2b_id`` as the caller may use it.

        Raises:
            NotFound: Not an E2B sandbox, not running, or its container is gone.
            grpc.aio.AioRpcError: The gateway's refusal (e.g. another key's run).
        """
        task = await self._task(api_key, e2b_id)
        if task.status != task_pb2.TASK_STATUS_RUNNING or not task.current_run_id:
            raise NotFound(f"sandbox {e2b_id!r} not found (it ended)")
        token = await self.token(api_key, task.current_run_id)
        box = await self._box(api_key, task.task_id)
        if box is None:
            raise NotFound(f"sandbox {e2b_id!r} not found (its container is gone)")
        return Held(task, task.current_run_id, Caller(api_key, token), box)

    # ---- the control plane ---------------------------------------------------

    def describe(self, task: task_pb2.Task, box: sandbox_pb2.Sandbox) -> dict[str, Any]:
        """E2B's ``ListedSandbox`` / ``SandboxDetail`` body."""
        return {
            "templateID": task.assignee,
            "sandboxID": task.task_id,
            "clientID": "longshore",
            "alias": task.assignee,
            "startedAt": _iso(box.start_time) or _iso(box.create_time),
            "endAt": _iso(box.lease_expire_time) or _iso(box.start_time),
            "cpuCount": 0,
            "memoryMB": 0,
            "diskSizeMB": 0,
            "state": _state(box),
            "envdVersion": ENVD_VERSION,
            "metadata": metadata_of(task),
        }

    async def get(self, api_key: str, e2b_id: str) -> dict[str, Any]:
        """One sandbox's detail (read scope: any E2B sandbox of the deployment)."""
        task = await self._task(api_key, e2b_id)
        box = await self._box(api_key, task.task_id)
        if box is None or task.status != task_pb2.TASK_STATUS_RUNNING:
            raise NotFound(f"sandbox {e2b_id!r} not found")
        return self.describe(task, box)

    async def list(
        self, api_key: str, metadata: Mapping[str, str], states: set[str]
    ) -> list[dict[str, Any]]:
        """Running E2B sandboxes whose metadata include ``metadata``, at most ``e2b.max_listed``."""
        who = Caller(api_key).metadata()
        tasks: dict[str, task_pb2.Task] = {}
        token = ""
        while len(tasks) < self._section.max_listed:
            page = await self._gw.kanban.ListTasks(
                kpb.ListTasksRequest(
                    board_id=self._section.board_id,
                    statuses=[task_pb2.TASK_STATUS_RUNNING],
                    page_size=500,
                    page_token=token,
                ),
                metadata=who,
            )
            for task in page.tasks:
                meta = metadata_of(task)
                if task.labels.get(MARK) == "sandbox" and all(
                    meta.get(k) == v for k, v in metadata.items()
                ):
                    tasks[task.task_id] = task
            token = page.next_page_token
            if not token:
                break
        listed: list[dict[str, Any]] = []
        for task in list(tasks.values())[: self._section.max_listed]:
            box = await self._box(api_key, task.task_id)
            if box is not None and (not states or _state(box) in states):
                listed.append(self.describe(task, box))
        return listed

    async def kill(self, api_key: str, e2b_id: str) -> None:
        """Removes the sandbox and completes its task."""
        held = await self.hold(api_key, e2b_id)
        await self._gw.sandbox.ReleaseSandbox(
            spb.ReleaseSandboxRequest(sandbox_id=held.sandbox.sandbox_id, force_remove=True),
            metadata=held.caller.metadata(),
        )
        self.keeper.drop(held.run_id)
        await self._gw.worker.CompleteTask(
            wpb.CompleteTaskRequest(run_id=held.run_id, summary="killed through E2B"),
            metadata=Caller(api_key).metadata(),
        )

    async def set_timeout(self, api_key: str, e2b_id: str, timeout: int) -> None:
        """Sets the sandbox's lease to ``timeout`` seconds from now."""
        held = await self.hold(api_key, e2b_id)
        await self._lease(held.caller, held.sandbox.sandbox_id, timeout)
        self.keeper.extend(held.run_id, time.time() + timeout)

    async def pause(self, api_key: str, e2b_id: str) -> None:
        """Pauses the sandbox (its lease keeps running)."""
        held = await self.hold(api_key, e2b_id)
        await self._gw.sandbox.PauseSandbox(
            lpb.PauseSandboxRequest(sandbox_id=held.sandbox.sandbox_id),
            metadata=held.caller.metadata(),
        )

    async def connect(self, api_key: str, e2b_id: str, timeout: int | None) -> dict[str, Any]:
        """Resumes a paused sandbox, optionally re-leases it; returns a ``Sandbox`` body."""
        held = await self.hold(api_key, e2b_id)
        if held.sandbox.state == sandbox_pb2.SANDBOX_STATE_PAUSED:
            await self._gw.sandbox.ResumeSandbox(
                lpb.ResumeSandboxRequest(sandbox_id=held.sandbox.sandbox_id),
                metadata=held.caller.metadata(),
            )
        if timeout is not None:
            await self._lease(held.caller, held.sandbox.sandbox_id, timeout)
            self.keeper.extend(held.run_id, time.time() + timeout)
        return self._created(
            e2b_id, held.task.assignee, api_key, held.run_id, held.sandbox.sandbox_id
        )
