#!/usr/bin/env bash
# `make up`: runs Longshore as a compose stack on this machine, from nothing.
# Installs what is missing (as root on Debian: docker.io, docker-compose,
# debootstrap), starts the engine when none answers (scripts/ensure-docker.sh),
# writes .env with fresh secrets when missing (scripts/compose-env.sh), builds
# the base and service images (scripts/compose-images.sh), starts the stack,
# waits until every service is healthy and prints where to reach it.
# See scripts/compose-lib.sh for LONGSHORE_ENV_FILE, LONGSHORE_COMPOSE_FILES, PROFILES.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/compose-lib.sh
start=$SECONDS
say() { echo "up: $*" >&2; }

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${missing[*]}: install them (as root: apt-get install ${missing[*]})"
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
bash scripts/ensure-docker.sh
compose_cmd

bash scripts/compose-env.sh "$env_file"
project=${COMPOSE_PROJECT_NAME:-$(env_get COMPOSE_PROJECT_NAME)}
project=${project:-longshore}
# Optional profiles point the services at their extra containers, persistently.
for profile in ${PROFILES:-}; do
  case $profile in
    postgres)
      [ -n "$(env_get LONGSHORE_DATABASE_URL)" ] || env_set LONGSHORE_DATABASE_URL \
        "postgresql+psycopg://longshore:$(env_get LONGSHORE_POSTGRES_PASSWORD)@postgres:5432/longshore" ;;
    tracing)
      [ -n "$(env_get OTEL_EXPORTER_OTLP_ENDPOINT)" ] || env_set OTEL_EXPORTER_OTLP_ENDPOINT http://tracing:4317 ;;
    *) say "unknown profile $profile (known: postgres tracing)"; exit 2 ;;
  esac
done

LONGSHORE_IMAGE_PREFIX=${LONGSHORE_IMAGE_PREFIX:-$(env_get LONGSHORE_IMAGE_PREFIX)}
LONGSHORE_IMAGE_TAG=${LONGSHORE_IMAGE_TAG:-$(env_get LONGSHORE_IMAGE_TAG)}
export LONGSHORE_IMAGE_PREFIX=${LONGSHORE_IMAGE_PREFIX:-longshore/}
export LONGSHORE_IMAGE_TAG=${LONGSHORE_IMAGE_TAG:-latest}
export COMPOSE_PROJECT_NAME=$project
images_start=$SECONDS
bash scripts/compose-images.sh
# `docker compose build` on this machine then uses the same base.
[ -n "$(env_get LONGSHORE_BASE_IMAGE)" ] || env_set LONGSHORE_BASE_IMAGE "$(bash scripts/base-image.sh)"
say "images ready in $((SECONDS - images_start)) s"

compose_args
if [[ " ${PROFILES:-} " == *" postgres "* ]]; then
  "${compose[@]}" "${args[@]}" up -d postgres
fi
"${compose[@]}" "${args[@]}" up -d --no-build --remove-orphans

# Wait until every container of the project is healthy (or has no health check).
deadline=$((SECONDS + ${LONGSHORE_UP_TIMEOUT:-240}))
while :; do
  ids=$("${compose[@]}" "${args[@]}" ps -q)
  waiting=()
  for id in $ids; do
    state=$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
    read -r name status health <<<"$state"
    if [ "$status" != running ] || { [ "$health" != healthy ] && [ "$health" != none ]; }; then
      waiting+=("${name#/}:$status/$health")
    fi
  done
  [ -n "$ids" ] && [ ${#waiting[@]} -eq 0 ] && break
  if [ $SECONDS -ge $deadline ]; then
    say "not healthy in time: ${waiting[*]}"
    "${compose[@]}" "${args[@]}" ps >&2 || true
    "${compose[@]}" "${args[@]}" logs --tail 30 >&2 || true
    exit 1
  fi
  sleep 2
done

# What the engine actually published (address and port), not what was asked for.
published() { "${compose[@]}" "${args[@]}" port "$1" "$2" | tail -n 1; }
gateway_published=$(published gateway 50051)
dashboard_published=$(published dashboard 8080)
# A wildcard publish is reached from this machine on loopback.
local_addr() {
  case ${1%:*} in 0.0.0.0 | "::" | "[::]") echo "127.0.0.1:${1##*:}" ;; *) echo "$1" ;; esac
}
gateway=$(local_addr "$gateway_published")
dashboard=$(local_addr "$dashboard_published")
exposure="loopback only"
[ "$gateway" = "$gateway_published" ] || exposure="EVERY interface: sandboxes and other machines reach it"
cat <<MSG

Longshore is up (project $project, $((SECONDS - start)) s).
  gateway    $gateway_published   ($exposure; gRPC, clients send 'authorization: Bearer <key>')
  API key    $(env_get LONGSHORE_API_KEY)   (admin; kept in $env_file)
  dashboard  http://$dashboard/   (published on $dashboard_published; log in with the API key)
CLI:  export LONGSHORE_GATEWAY_ADDR=$gateway LONGSHORE_API_KEY=<the key above>
Stop: make down   (make down VOLUMES=1 also deletes the data)
MSG
