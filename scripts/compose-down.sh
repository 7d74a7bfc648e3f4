#!/usr/bin/env bash
# `make down`: stops the compose stack and removes its containers and network.
# With VOLUMES=1 it also removes the stack's volumes (the kanban database and
# logs, the postgres data) and the sandboxes of its deployment, i.e. everything
# the stack made. Without it, persistent sandboxes and data stay for the next `make up`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/compose-lib.sh
say() { echo "down: $*" >&2; }

if ! compose_cmd; then
  say "no compose installed: nothing to stop"
  exit 0
fi
project=${COMPOSE_PROJECT_NAME:-$(env_get COMPOSE_PROJECT_NAME)}
project=${project:-longshore}
deployment=${LONGSHORE_DEPLOYMENT:-$(env_get LONGSHORE_DEPLOYMENT)}
deployment=${deployment:-default}
# Every profile, so their containers go too; placeholders keep interpolation
# from failing when the env file is gone (down needs no secret).
PROFILES="postgres tracing"
compose_args
if [ ! -f "$env_file" ]; then
  export LONGSHORE_INTERNAL_TOKEN=- LONGSHORE_GATEWAY_API_KEYS=- \
    LONGSHORE_DASHBOARD_API_KEY=- LONGSHORE_DASHBOARD_SESSION_SECRET=-
fi
flags=(--remove-orphans)
case ${VOLUMES:-} in 1 | true | yes) flags+=(--volumes) ;; esac
"${compose[@]}" "${args[@]}" down "${flags[@]}"

if [[ " ${flags[*]} " == *" --volumes "* ]]; then
  sandboxes=$(docker ps -aq --filter label=io.longshore.managed=1 \
    --filter "label=io.longshore.deployment=$deployment" --filter label=io.longshore.task-id)
  if [ -n "$sandboxes" ]; then
    say "removing the sandboxes of deployment $deployment"
    docker rm -f -v $sandboxes >/dev/null
  fi
fi
say "project $project stopped"
