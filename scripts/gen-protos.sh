#!/usr/bin/env bash
# Regenerates gen/python from protos/ with grpcio-tools (+ mypy-protobuf stubs).
# Idempotent: the output depends only on the .proto files and the pinned tools.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-.venv/bin/python}
out=gen/python
rm -rf "$out/longshore"
mkdir -p "$out"
mapfile -t files < <(cd protos && find longshore -name '*.proto' | LC_ALL=C sort)
"$py" -m grpc_tools.protoc -I protos \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  --plugin=protoc-gen-mypy="$(dirname "$py")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$py")/protoc-gen-mypy_grpc" \
  "${files[@]}"
# Make every generated directory a regular package so tools and mypy resolve it.
find "$out/longshore" -type d | while read -r d; do : > "$d/__init__.py"; done
: > "$out/longshore/py.typed"
