#!/bin/sh
# Build stage of every service image: creates the venv /opt/longshore and installs
# the project's runtime dependencies (read from pyproject.toml) into it. When the
# host built wheels into deploy/wheels/ (scripts/compose-wheels.sh) they are the
# only source (`--no-index`: no network needed); otherwise pip uses the index.
set -eu
python3 -m venv /opt/longshore
python3 - /src/pyproject.toml >/tmp/requirements.txt <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)
print("\n".join([*project["build-system"]["requires"], *project["project"]["dependencies"]]))
PY
if ls /wheels/*.whl >/dev/null 2>&1; then
  set -- --no-index --find-links /wheels
else
  set --
fi
/opt/longshore/bin/pip install --no-cache-dir --disable-pip-version-check "$@" -r /tmp/requirements.txt
