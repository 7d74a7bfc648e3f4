#!/usr/bin/env bash
# Builds the four service images (services/<name>/Dockerfile, repo root as the
# context) on the resolved Python base, from host-built wheels, and prints their
# sizes. Reuses everything it can: the base image (scripts/base-image.sh), the
# wheel cache (scripts/compose-wheels.sh) and the engine's layer cache, so a
# rebuild after a source change takes seconds.
#   LONGSHORE_IMAGE_PREFIX (longshore/), LONGSHORE_IMAGE_TAG (latest): image names;
#   LONGSHORE_IMAGE_LABELS: extra "key=value" labels, space-separated (tests add
#   their run label); COMPOSE_PROJECT_NAME: recorded as the compose project label.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${LONGSHORE_IMAGE_PREFIX:-longshore/}
tag=${LONGSHORE_IMAGE_TAG:-latest}
services=(${LONGSHORE_SERVICES:-sandbox kanban gateway dashboard e2b})

base=$(bash scripts/base-image.sh)
bash scripts/compose-wheels.sh

# No io.longshore.managed here: that label marks sandboxes, and every container
# made from these images would inherit it (the Dockerfiles set io.longshore.component).
labels=()
[ -n "${COMPOSE_PROJECT_NAME:-}" ] && labels+=(--label "com.docker.compose.project=$COMPOSE_PROJECT_NAME")
for label in ${LONGSHORE_IMAGE_LABELS:-}; do labels+=(--label "$label"); done

# The legacy builder: Debian's docker.io ships no buildx, and BuildKit's
# Dockerfile frontend could not be pulled here anyway.
export DOCKER_BUILDKIT=0
for svc in "${services[@]}"; do
  start=$SECONDS
  log=$(mktemp /tmp/longshore-build-$svc.XXXXXX)
  if ! docker build --build-arg "BASE_IMAGE=$base" ${labels[@]+"${labels[@]}"} \
      -f "services/$svc/Dockerfile" -t "$prefix$svc:$tag" . >"$log" 2>&1; then
    echo "compose-images: building $prefix$svc:$tag failed; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  rm -f "$log"
  echo "compose-images: $prefix$svc:$tag built in $((SECONDS - start)) s" >&2
done
for svc in "${services[@]}"; do
  docker image inspect --format "compose-images: $prefix$svc:$tag {{.Size}} bytes" "$prefix$svc:$tag" |
    awk '{printf "%s %s %.0f MB\n", $1, $2, $3 / 1e6}' >&2
done
