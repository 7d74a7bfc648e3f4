#!/usr/bin/env bash
# Builds, on the host, every wheel the service images install (the project's
# runtime dependencies plus the build backend) into deploy/wheels/, so that the
# image build installs them with `pip --no-index` and never needs the network
# (containers here reach package registries only through a proxy whose CA the
# base image does not trust). Skips the work when the cache matches pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
out=deploy/wheels

# A Python of the base image's minor (3.11) builds the wheels: the project venv
# when there is one, else a throwaway venv (a fresh machine running `make up`).
py=${PY:-.venv/bin/python}
if [ ! -x "$py" ]; then
  py=deploy/.wheel-venv/bin/python
  if [ ! -x "$py" ]; then
    python3 -m venv deploy/.wheel-venv 2>/dev/null || {
      [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv deploy/.wheel-venv
    }
  fi
fi
want=${LONGSHORE_PYTHON_MINOR:-3.11}
have=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$have" != "$want" ]; then
  echo "compose-wheels: $py is Python $have but the images run $want; set PY to a Python $want" >&2
  exit 1
fi

reqs=$("$py" - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
build = project["build-system"]["requires"]
print("\n".join([*build, *project["project"]["dependencies"]]))
PY
)
stamp=$(printf '%s\n%s\n' "$("$py" -c 'import sys; print(sys.implementation.cache_tag)')" "$reqs" | sha256sum | cut -c1-16)
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ]; then
  echo "compose-wheels: $out is current ($(find "$out" -name '*.whl' | wc -l) wheels)" >&2
  exit 0
fi
mkdir -p "$out"
find "$out" -name '*.whl' -delete
printf '%s\n' "$reqs" >"$out/requirements.txt"
start=$SECONDS
"$py" -m pip wheel -q --wheel-dir "$out" -r "$out/requirements.txt" 2> >(grep -v "is ignored: it is neither" >&2)
echo "$stamp" >"$out/.stamp"
echo "compose-wheels: built $(find "$out" -name '*.whl' | wc -l) wheels in $((SECONDS - start)) s" >&2
