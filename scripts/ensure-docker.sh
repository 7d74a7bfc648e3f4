#!/usr/bin/env bash
# Makes sure a Docker engine answers. When none does and we are root on Debian,
# installs docker.io (if needed) and starts dockerd in the background, as
# DESIGN.md's machine facts describe. Anywhere else it fails with a clear message.
set -euo pipefail
log=${LONGSHORE_DOCKERD_LOG:-/var/log/longshore-dockerd.log}

engine_up() { timeout 5 docker info >/dev/null 2>&1; }

engine_up && exit 0
case "${DOCKER_HOST:-unix:///var/run/docker.sock}" in
  unix:///var/run/docker.sock|unix:///run/docker.sock) ;;
  *) echo "ensure-docker: DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local dockerd" >&2
     exit 1 ;;
esac
command -v docker >/dev/null 2>&1 && [ -S /var/run/docker.sock ] && {
  # A socket without an answering engine: give a dockerd that is starting a moment.
  for _ in $(seq 1 10); do engine_up && exit 0; sleep 0.5; done
}
if [ "$(id -u)" != 0 ]; then
  echo "ensure-docker: no Docker engine reachable and not root: start dockerd or set DOCKER_HOST" >&2
  exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || { echo "ensure-docker: no dockerd and no apt-get" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io tini >/dev/null
fi
echo "ensure-docker: starting dockerd (log: $log)"
nohup setsid dockerd >"$log" 2>&1 </dev/null &
for _ in $(seq 1 60); do
  engine_up && exit 0
  sleep 0.5
done
echo "ensure-docker: dockerd did not answer within 30 s; see $log" >&2
tail -n 20 "$log" >&2 || true
exit 1
