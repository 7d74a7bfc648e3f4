"""A file and a shell session in a sandbox, through the gateway with the generated stubs.

Writes a script into the sandbox, opens a session, moves into the script's
directory and exports a variable in one command, runs the script in the
next (the directory and the variable carried over), reads back the file the
script wrote, and closes the session.

    PYTHONPATH=gen/python LONGSHORE_API_KEY=lsk_... python3 docs/examples/session.py SANDBOX
"""

import os
import sys

import grpc
from longshore.sandbox.v1 import sandbox_pb2, sandbox_service_pb2, session_pb2
from longshore.sandbox.v1.sandbox_service_pb2_grpc import SandboxServiceStub

box = sys.argv[1]
gateway = os.environ.get("LONGSHORE_GATEWAY_ADDR", "127.0.0.1:50051")
stub = SandboxServiceStub(grpc.insecure_channel(gateway))
auth = (("authorization", "Bearer " + os.environ["LONGSHORE_API_KEY"]),)

# 1. A file: the script the session will run.
script = b'echo "$GREETING from $(pwd)" | tee out.txt\n'


def upload():
    yield sandbox_service_pb2.WriteFilesRequest(sandbox_id=box)
    yield sandbox_service_pb2.WriteFilesRequest(
        header=sandbox_service_pb2.WriteFileHeader(
            path="/work/demo/hello.sh", size=len(script), mode=0o755, make_parents=True
        )
    )
    yield sandbox_service_pb2.WriteFilesRequest(data=script)


stub.WriteFiles(upload(), metadata=auth)

# 2. A session: state carries over from one command to the next.
session = stub.OpenSession(session_pb2.OpenSessionRequest(sandbox_id=box), metadata=auth).session


def run(command):
    """Runs one command; prints its output as it streams; returns its exit status."""
    request = session_pb2.RunSessionCommandRequest(
        sandbox_id=box, session_id=session.session_id, command=command
    )
    for message in stub.RunSessionCommand(request, metadata=auth):
        if message.HasField("exit"):
            return message.exit
        out = sys.stderr if message.output.stream == sandbox_pb2.OUTPUT_STREAM_STDERR else sys.stdout
        out.write(message.output.data.decode())
    raise RuntimeError("the stream ended without an exit")


assert run("cd /work/demo && export GREETING=hello").exit_code == 0
assert run("./hello.sh").exit_code == 0  # prints "hello from /work/demo"

# 3. Read back what the script wrote.
read = sandbox_service_pb2.ReadFileRequest(sandbox_id=box, path="/work/demo/out.txt")
body = b"".join(m.data for m in stub.ReadFile(read, metadata=auth))
assert body == b"hello from /work/demo\n", body

stub.CloseSession(
    session_pb2.CloseSessionRequest(sandbox_id=box, session_id=session.session_id),
    metadata=auth,
)
print("read back:", body.decode().strip())
