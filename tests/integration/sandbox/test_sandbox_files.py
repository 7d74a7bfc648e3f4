"""Files in a sandbox through the real gateway and manager processes, on the real engine.

Every call goes client → gateway (API key, scope) → sandbox manager (access,
engine archive API). Covers text and binary files, 10 MB, mode and owner,
depth listing and paging, move and remove, and the precise errors: a missing
path (NOT_FOUND), a stopped sandbox, a tmpfs path and a read-only rootfs
(FAILED_PRECONDITION), a file over the cap (RESOURCE_EXHAUSTED), a wrong
scope (PERMISSION_DENIED at the gateway), another run's token and a path the
sandbox's non-root user may not touch (PERMISSION_DENIED at the manager).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import docker
import grpc
import pytest
from longshore.sandbox.v1 import file_pb2, sandbox_pb2, sandbox_service_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

from services.runtime.sandbox_tokens import SANDBOX_TOKEN_KEY, SandboxGrant, SandboxTokens
from services.runtime.sandbox_tokens import spec_digest as digest_of
from services.runtime.testing import serve_in_process
from services.sandbox.manager import SandboxManager
from services.sandbox.reaper import Reaper, StartupGuard
from services.sandbox.server import SandboxServicer, grpc_service
from tests.integration.gateway.stack import RealStack, Stubs, auth, real_stack
from tests.integration.sandbox.conftest import remove_deployment

T = 60
MIB = 1024 * 1024
pb = sandbox_service_pb2
Metadata = Sequence[tuple[str, str]]
#: The worker's sandbox runs as nobody, so its user's permissions are tested.
WORKER_SPEC = sandbox_pb2.SandboxSpec(user="65534")


@dataclass
class Rig:
    stack: RealStack
    stubs: Stubs
    deployment: str
    box: str  # a root sandbox, driven with the admin key
    worker_box: str  # task "t-work": the worker's, running as 65534

    @property
    def admin(self) -> Metadata:
        return auth(self.stack.keys.admin)

    def worker(self, task: str = "t-work") -> Metadata:
        grant = SandboxGrant(
            deployment=self.deployment,
            task_id=task,
            profile="coder",
            run_id=f"r-{task}",
            spec_digest=digest_of(WORKER_SPEC),
            expires=time.time() + 600,
            holder="bot",
        )
        token = SandboxTokens(self.stack.token).mint(grant)
        return (*auth(self.stack.keys.worker), (SANDBOX_TOKEN_KEY, token))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, run_id: str, sandbox_image: str) -> Iterator[Rig]:
    deployment = f"t{run_id}-files"
    home = tmp_path_factory.mktemp("files-stack")
    client = docker.from_env()
    try:
        with (
            real_stack(home, deployment=deployment, image=sandbox_image) as stack,
            stack.channel() as channel,
        ):
            stubs = Stubs(channel)
            admin = auth(stack.keys.admin)
            box = stubs.sandbox.AcquireSandbox(
                pb.AcquireSandboxRequest(task_id="t-files", profile="coder"),
                timeout=T,
                metadata=admin,
            ).sandbox.sandbox_id
            worker_box = stubs.sandbox.AcquireSandbox(
                pb.AcquireSandboxRequest(task_id="t-work", profile="coder", spec=WORKER_SPEC),
                timeout=T,
                metadata=admin,
            ).sandbox.sandbox_id
            yield Rig(stack, stubs, deployment, box, worker_box)
    finally:
        remove_deployment(client, deployment)
        client.close()


def write(
    rig: Rig,
    box: str,
    files: Sequence[tuple[pb.WriteFileHeader, bytes]],
    metadata: Metadata | None = None,
    chunk: int = MIB,
) -> pb.WriteFilesResponse:
    def messages() -> Iterator[pb.WriteFilesRequest]:
        yield pb.WriteFilesRequest(sandbox_id=box)
        for header, data in files:
            yield pb.WriteFilesRequest(header=header)
            for start in range(0, len(data), chunk):
                yield pb.WriteFilesRequest(data=data[start : start + chunk])

    return rig.stubs.sandbox.WriteFiles(
        messages(), timeout=T, metadata=rig.admin if metadata is None else metadata
    )


def header(path: str, data: bytes, **fields: object) -> tuple[pb.WriteFileHeader, bytes]:
    return pb.WriteFileHeader(path=path, size=len(data), **fields), data  # type: ignore[arg-type]


def read(
    rig: Rig, box: str, path: str, metadata: Metadata | None = None
) -> tuple[file_pb2.FileEntry, bytes]:
    entry = file_pb2.FileEntry()
    data = bytearray()
    for message in rig.stubs.sandbox.ReadFile(
        pb.ReadFileRequest(sandbox_id=box, path=path),
        timeout=T,
        metadata=rig.admin if metadata is None else metadata,
    ):
        if message.HasField("entry"):
            entry = message.entry
        else:
            data += message.data
    return entry, bytes(data)


def listing(rig: Rig, box: str, path: str, depth: int = 0, **fields: object) -> list[str]:
    response = rig.stubs.sandbox.ListDirectory(
        pb.ListDirectoryRequest(sandbox_id=box, path=path, depth=depth, **fields),  # type: ignore[arg-type]
        timeout=T,
        metadata=rig.admin,
    )
    return [e.path for e in response.entries]


def failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def exec_out(rig: Rig, box: str, argv: list[str]) -> bytes:
    out = b""
    for message in rig.stubs.sandbox.Exec(
        pb.ExecRequest(sandbox_id=box, argv=argv), timeout=T, metadata=rig.admin
    ):
        if message.HasField("output"):
            out += message.output.data
    return out


def test_text_and_binary_files_round_trip_with_mode_and_owner(rig: Rig) -> None:
    text = "héllo, sandbox\n".encode()
    binary = bytes(range(256)) * 64 + b"\0\0\xff"
    response = write(
        rig,
        rig.box,
        [
            header("/work/notes.txt", text, make_parents=True),
            header("/work/blob.bin", binary, mode=0o600, uid=1234, gid=2345),
        ],
    )
    assert [f.path for f in response.files] == ["/work/notes.txt", "/work/blob.bin"]
    assert response.bytes_written == len(text) + len(binary)
    entry, data = read(rig, rig.box, "/work/notes.txt")
    assert data == text and entry.size == len(text) and entry.type == file_pb2.FILE_TYPE_FILE
    entry, data = read(rig, rig.box, "/work/blob.bin")
    assert data == binary and entry.mode == 0o600
    # The sandbox's own processes see the same file, mode and owner.
    assert exec_out(rig, rig.box, ["stat", "-c", "%a %u %g %s", "/work/blob.bin"]) == (
        f"600 1234 2345 {len(binary)}\n".encode()
    )
    stat = rig.stubs.sandbox.StatPath(
        pb.StatPathRequest(sandbox_id=rig.box, path="/work/blob.bin"), timeout=T, metadata=rig.admin
    ).entry
    assert (stat.size, stat.mode, stat.name) == (len(binary), 0o600, "blob.bin")
    # A second write replaces the file.
    write(rig, rig.box, [header("/work/notes.txt", b"v2")])
    assert read(rig, rig.box, "/work/notes.txt")[1] == b"v2"


def test_a_10_mb_file_round_trips_in_chunks(rig: Rig) -> None:
    data = os.urandom(10 * MIB + 123)
    write(rig, rig.box, [header("/big/ten.bin", data, make_parents=True)], chunk=MIB // 2)
    entry, back = read(rig, rig.box, "/big/ten.bin")
    assert entry.size == len(data)
    assert back == data


def test_listing_by_depth_and_pages(rig: Rig) -> None:
    made = rig.stubs.sandbox.MakeDirectory(
        pb.MakeDirectoryRequest(sandbox_id=rig.box, path="/tree/a/b", make_parents=True),
        timeout=T,
        metadata=rig.admin,
    )
    assert made.created and made.entry.type == file_pb2.FILE_TYPE_DIRECTORY
    again = rig.stubs.sandbox.MakeDirectory(
        pb.MakeDirectoryRequest(sandbox_id=rig.box, path="/tree/a/b"), timeout=T, metadata=rig.admin
    )
    assert not again.created
    write(rig, rig.box, [header("/tree/top.txt", b"1"), header("/tree/a/b/deep.txt", b"22")])
    assert listing(rig, rig.box, "/tree") == ["/tree/a", "/tree/top.txt"]
    assert listing(rig, rig.box, "/tree", depth=3) == [
        "/tree/a",
        "/tree/a/b",
        "/tree/a/b/deep.txt",
        "/tree/top.txt",
    ]
    first = rig.stubs.sandbox.ListDirectory(
        pb.ListDirectoryRequest(sandbox_id=rig.box, path="/tree", depth=3, page_size=3),
        timeout=T,
        metadata=rig.admin,
    )
    assert len(first.entries) == 3 and first.next_page_token
    second = rig.stubs.sandbox.ListDirectory(
        pb.ListDirectoryRequest(
            sandbox_id=rig.box, path="/tree", depth=3, page_size=3, page_token=first.next_page_token
        ),
        timeout=T,
        metadata=rig.admin,
    )
    assert [e.path for e in second.entries] == ["/tree/top.txt"] and not second.next_page_token
    deep = next(e for e in first.entries if e.path == "/tree/a/b/deep.txt")
    assert (deep.size, deep.uid, deep.gid) == (2, 0, 0)
    code, details = failure(
        lambda: listing(rig, rig.box, "/tree", depth=1, page_token=first.next_page_token)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details
    assert failure(lambda: listing(rig, rig.box, "/tree", depth=33))[0] == (
        grpc.StatusCode.OUT_OF_RANGE
    )


def test_move_and_remove(rig: Rig) -> None:
    write(rig, rig.box, [header("/mv/src.txt", b"moving", make_parents=True)])
    moved = rig.stubs.sandbox.MovePath(
        pb.MovePathRequest(
            sandbox_id=rig.box, source_path="/mv/src.txt", destination_path="/mv/dst.txt"
        ),
        timeout=T,
        metadata=rig.admin,
    )
    assert moved.entry.path == "/mv/dst.txt"
    assert read(rig, rig.box, "/mv/dst.txt")[1] == b"moving"
    write(rig, rig.box, [header("/mv/other.txt", b"x")])
    code, _ = failure(
        lambda: rig.stubs.sandbox.MovePath(
            pb.MovePathRequest(
                sandbox_id=rig.box, source_path="/mv/other.txt", destination_path="/mv/dst.txt"
            ),
            timeout=T,
            metadata=rig.admin,
        )
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    code, details = failure(
        lambda: rig.stubs.sandbox.RemovePath(
            pb.RemovePathRequest(sandbox_id=rig.box, path="/mv"), timeout=T, metadata=rig.admin
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not empty" in details
    rig.stubs.sandbox.RemovePath(
        pb.RemovePathRequest(sandbox_id=rig.box, path="/mv", recursive=True),
        timeout=T,
        metadata=rig.admin,
    )
    code, details = failure(
        lambda: rig.stubs.sandbox.StatPath(
            pb.StatPathRequest(sandbox_id=rig.box, path="/mv"), timeout=T, metadata=rig.admin
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND and "'/mv' not found" in details


def test_missing_paths_are_not_found(rig: Rig) -> None:
    for call in (
        lambda: read(rig, rig.box, "/nope.txt"),
        lambda: listing(rig, rig.box, "/nope"),
        lambda: rig.stubs.sandbox.RemovePath(
            pb.RemovePathRequest(sandbox_id=rig.box, path="/nope"), timeout=T, metadata=rig.admin
        ),
        lambda: write(rig, rig.box, [header("/no/such/dir/f.txt", b"x")]),
        lambda: read(rig, "0" * 64, "/etc/passwd"),
    ):
        code, details = failure(call)
        assert code == grpc.StatusCode.NOT_FOUND, details


def test_bad_paths_are_invalid_arguments(rig: Rig) -> None:
    for path in ("relative.txt", "/a/../etc/passwd", "/a//b", "/a/", "/a\x00b", "/" + "x" * 5000):
        code, details = failure(lambda path=path: read(rig, rig.box, path))  # type: ignore[misc]
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (path[:20], details)
    # Data that does not add up to the header's size.
    code, details = failure(
        lambda: rig.stubs.sandbox.WriteFiles(
            iter(
                [
                    pb.WriteFilesRequest(sandbox_id=rig.box),
                    pb.WriteFilesRequest(header=pb.WriteFileHeader(path="/short.txt", size=10)),
                    pb.WriteFilesRequest(data=b"abc"),
                ]
            ),
            timeout=T,
            metadata=rig.admin,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "3 of its 10 bytes" in details


def test_over_the_cap_is_resource_exhausted_before_any_byte(rig: Rig) -> None:
    code, details = failure(
        lambda: rig.stubs.sandbox.WriteFiles(
            iter(
                [
                    pb.WriteFilesRequest(sandbox_id=rig.box),
                    pb.WriteFilesRequest(header=pb.WriteFileHeader(path="/huge", size=1 << 30 | 1)),
                ]
            ),
            timeout=T,
            metadata=rig.admin,
        )
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "sandbox.max_file_bytes" in details


def test_tmpfs_and_read_only_rootfs_are_failed_preconditions(rig: Rig) -> None:
    code, details = failure(lambda: write(rig, rig.box, [header("/tmp/x.txt", b"x")]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "tmpfs" in details
    ro = rig.stubs.sandbox.AcquireSandbox(
        pb.AcquireSandboxRequest(
            task_id="t-ro", profile="coder", spec=sandbox_pb2.SandboxSpec(read_only_rootfs=True)
        ),
        timeout=T,
        metadata=rig.admin,
    ).sandbox.sandbox_id
    code, details = failure(lambda: write(rig, ro, [header("/x.txt", b"x")]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "read-only" in details
    # Reading a read-only sandbox is fine.
    assert read(rig, ro, "/etc/passwd")[1].startswith(b"root:")


def test_a_stopped_sandbox_is_failed_precondition(rig: Rig) -> None:
    box = rig.stubs.sandbox.AcquireSandbox(
        pb.AcquireSandboxRequest(task_id="t-stop", profile="coder"), timeout=T, metadata=rig.admin
    ).sandbox.sandbox_id
    client = docker.from_env()
    try:
        client.api.stop(box, timeout=1)
    finally:
        client.close()
    code, details = failure(lambda: write(rig, box, [header("/x.txt", b"x")]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not running" in details
    code, _ = failure(lambda: read(rig, box, "/etc/passwd"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_refusals_at_the_gateway_and_at_the_manager(rig: Rig) -> None:
    # A key without the sandbox-use scopes: refused by the gateway.
    reader = auth(rig.stack.keys.reader)
    code, details = failure(lambda: read(rig, rig.worker_box, "/etc/passwd", reader))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "needs scope" in details
    code, details = failure(lambda: write(rig, rig.worker_box, [header("/w.txt", b"x")], reader))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "needs scope" in details
    # Another run's token: refused by the manager, naming the sandbox's task.
    other = rig.worker("t-other")
    code, details = failure(lambda: read(rig, rig.worker_box, "/etc/passwd", other))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "belongs to task 't-work'" in details
    code, details = failure(lambda: write(rig, rig.worker_box, [header("/tmp2.txt", b"x")], other))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "belongs to task" in details
    # No token at all.
    code, _ = failure(lambda: read(rig, rig.worker_box, "/etc/passwd", auth(rig.stack.keys.worker)))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_the_runs_holder_is_held_to_the_sandboxs_user(rig: Rig) -> None:
    mine = rig.worker()
    admin_made = rig.stubs.sandbox.MakeDirectory(
        pb.MakeDirectoryRequest(
            sandbox_id=rig.worker_box, path="/home/w", make_parents=True, uid=65534, gid=65534
        ),
        timeout=T,
        metadata=rig.admin,
    )
    assert admin_made.created
    written = write(rig, rig.worker_box, [header("/home/w/a.txt", b"mine")], mine)
    assert (written.files[0].uid, written.files[0].gid) == (65534, 65534)
    assert read(rig, rig.worker_box, "/home/w/a.txt", mine)[1] == b"mine"
    # Root's directories and files are root's, as for the sandbox's processes.
    code, details = failure(lambda: write(rig, rig.worker_box, [header("/etc/evil", b"x")], mine))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "may not write into '/etc'" in details
    write(rig, rig.worker_box, [header("/root-only.txt", b"secret", mode=0o600, uid=0, gid=0)])
    code, details = failure(lambda: read(rig, rig.worker_box, "/root-only.txt", mine))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "may not read" in details
    # Only an operator chooses another owner or setuid bits.
    for bad in (
        header("/home/w/b.txt", b"x", uid=0),
        header("/home/w/c.txt", b"x", mode=0o4755),
    ):
        code, _ = failure(lambda bad=bad: write(rig, rig.worker_box, [bad], mine))  # type: ignore[misc]
        assert code == grpc.StatusCode.PERMISSION_DENIED
    # Move and remove run as the sandbox's user: the kernel says no for root's files.
    code, details = failure(
        lambda: rig.stubs.sandbox.RemovePath(
            pb.RemovePathRequest(sandbox_id=rig.worker_box, path="/root-only.txt"),
            timeout=T,
            metadata=mine,
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "rm exited" in details
    rig.stubs.sandbox.RemovePath(
        pb.RemovePathRequest(sandbox_id=rig.worker_box, path="/home/w/a.txt"),
        timeout=T,
        metadata=mine,
    )
    assert failure(lambda: read(rig, rig.worker_box, "/home/w/a.txt", mine))[0] == (
        grpc.StatusCode.NOT_FOUND
    )


def test_a_message_over_the_gateways_bound_is_resource_exhausted(rig: Rig) -> None:
    big = b"x" * (5 * MIB)  # gateway.max_message_bytes is 4 MiB
    code, details = failure(lambda: write(rig, rig.box, [header("/big.bin", big)], chunk=len(big)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details


def test_a_write_abandoned_mid_file_frees_its_pool_thread(
    make_manager: Callable[..., SandboxManager],
) -> None:
    """One pool thread: if the abandoned write kept it, the next call could never run."""
    manager = make_manager()
    servicer = SandboxServicer(manager, Reaper(manager, guard=StartupGuard()), max_workers=1)
    with serve_in_process([grpc_service(servicer)]) as running:
        stub = SandboxServiceStub(running.channel())
        box = stub.AcquireSandbox(
            pb.AcquireSandboxRequest(task_id="t-abandon", profile="coder"), timeout=T
        ).sandbox.sandbox_id
        sent_some = threading.Event()
        never = threading.Event()

        def stalled() -> Iterator[pb.WriteFilesRequest]:
            yield pb.WriteFilesRequest(sandbox_id=box)
            yield pb.WriteFilesRequest(header=pb.WriteFileHeader(path="/half.bin", size=10 * MIB))
            yield pb.WriteFilesRequest(data=b"x" * MIB)
            sent_some.set()
            never.wait()  # the caller stalls, then goes away

        call = stub.WriteFiles.future(stalled(), timeout=T)
        sent_some.wait(T)
        call.cancel()
        never.set()
        # The same single thread serves a whole new write and its read.
        stub.WriteFiles(
            iter(
                [
                    pb.WriteFilesRequest(sandbox_id=box),
                    pb.WriteFilesRequest(header=pb.WriteFileHeader(path="/after.txt", size=2)),
                    pb.WriteFilesRequest(data=b"ok"),
                ]
            ),
            timeout=T,
        )
        data = b"".join(
            m.data
            for m in stub.ReadFile(pb.ReadFileRequest(sandbox_id=box, path="/after.txt"), timeout=T)
        )
        assert data == b"ok"
