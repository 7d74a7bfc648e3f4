#!/usr/bin/env bash
# Installs what Longshore's tests and tools need on a fresh Debian machine.
#   bootstrap.sh python  -> system packages + .venv with the project and its dev extras
#   bootstrap.sh node    -> npm tools (buf) under tools/ and the Node example client
# Idempotent: every step checks first and does nothing when already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
  [ ${#need_apt[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! have apt-get; then
    echo "bootstrap: missing system packages (${need_apt[*]}); install them as root" >&2
    exit 1
  fi
  echo "bootstrap: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
}

system_packages() {
  # The Docker engine (DESIGN.md: Debian's docker.io; dockerd runs as root).
  [ -x /usr/sbin/dockerd ] || [ -x /usr/bin/dockerd ] || need_apt+=(docker.io)
  [ -x /usr/bin/docker-init ] || need_apt+=(tini)
  # The sandbox test image is FROM scratch + busybox-static.
  [ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need_apt+=(busybox-static)
  # A throwaway PostgreSQL cluster for the kanban suite.
  [ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
  # Headless browser for the dashboard tests (never `playwright install`).
  [ -x /usr/bin/chromium ] || need_apt+=(chromium)
  # Compose v1 for the compose stack (Compose v2 is not packaged here).
  have docker-compose || need_apt+=(docker-compose)
  have node || need_apt+=(nodejs npm)
  apt_install
}

python_env() {
  local venv=${VENV:-.venv}
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # This machine's pip config names local mirrors that may be absent; their
  # per-package "Location ... is ignored" warnings are noise, not errors.
  "$venv/bin/pip" install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
  "$venv/bin/pip" install -q -e '.[dev]' 2>&1 | { grep -v "^WARNING: Location" || true; }
  "$venv/bin/python" -c "import grpc, docker, sqlalchemy, pytest" \
    || { echo "bootstrap: the venv is incomplete; see pip's output above" >&2; exit 1; }
}

node_tools() {
  (cd tools && npm install --silent --no-audit --no-fund)
  if [ -f clients/node/package.json ]; then
    (cd clients/node && npm install --silent --no-audit --no-fund)
  fi
  # E2B's JavaScript SDK, the Node client of the e2b conformance test.
  (cd tests/integration/e2b/node && npm install --silent --no-audit --no-fund)
}

case "${1:-all}" in
  python) system_packages; python_env ;;
  node) node_tools ;;
  all) system_packages; python_env; node_tools ;;
  *) echo "usage: $0 [python|node|all]" >&2; exit 2 ;;
esac
