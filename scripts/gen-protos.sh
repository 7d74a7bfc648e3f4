#!/usr/bin/env bash
# Regenerates gen/python from protos/ with grpcio-tools (+ mypy-protobuf stubs).
# Idempotent: the output depends only on the .proto files and the pinned tools.
#   gen-protos.sh [PYTHON] [OUT_DIR]   (OUT_DIR defaults to gen/python)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-.venv/bin/python}
case "$py" in /*) ;; *) py="$PWD/$py" ;; esac  # absolute, but not resolved: keep the venv
out=${2:-gen/python}
# Generate into a scratch dir first so a failure never leaves gen/ half-deleted.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mapfile -t files < <(cd protos && find longshore -name '*.proto' | LC_ALL=C sort)
"$py" -m grpc_tools.protoc -I protos \
  --python_out="$tmp" --grpc_python_out="$tmp" \
  --mypy_out="$tmp" --mypy_grpc_out="$tmp" \
  --plugin=protoc-gen-mypy="$(dirname "$py")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$py")/protoc-gen-mypy_grpc" \
  "${files[@]}"
# Make every generated directory a regular package so tools and mypy resolve it.
find "$tmp/longshore" -type d | while read -r d; do : > "$d/__init__.py"; done
: > "$tmp/longshore/py.typed"
mkdir -p "$out"
rm -rf "$out/longshore"
mv "$tmp/longshore" "$out/longshore"
