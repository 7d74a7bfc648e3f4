#!/usr/bin/env bash
# Prints (on stdout) the Python base image the service images build FROM, and
# builds an equivalent of the official one locally, once, when it cannot be had.
#
# Order: $LONGSHORE_BASE_IMAGE when set; the official image when present or
# pullable; else the local build (reused when it exists). The local build is
# Debian bookworm minbase + python3 (3.11, the host's minor, so host-built cp311
# wheels install) + python3-venv + ca-certificates, made with debootstrap and
# `docker import` (~40 s) because no image can be pulled on machines of this kind.
set -euo pipefail

official=${LONGSHORE_OFFICIAL_BASE:-python:3.11-slim}
local_tag=${LONGSHORE_LOCAL_BASE:-longshore/python-base:3.11}
suite=${LONGSHORE_BASE_SUITE:-bookworm}
mirror=${LONGSHORE_BASE_MIRROR:-http://deb.debian.org/debian}

say() { echo "base-image: $*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
# The image's config, for `docker import`. Every image built FROM this one, and
# every container of those, inherits its labels: so never io.longshore.managed
# (it marks a sandbox; Longshore and its reaper would take each service
# container for one), only the component.
changes=(
  --change 'ENV LANG=C.UTF-8'
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  --change 'LABEL io.longshore.component=python-base'
  --change 'CMD ["python3"]'
)

if [ -n "${LONGSHORE_BASE_IMAGE:-}" ]; then
  echo "$LONGSHORE_BASE_IMAGE"
  exit 0
fi
if have_image "$official"; then
  echo "$official"
  exit 0
fi
if have_image "$local_tag"; then
  managed=$(docker image inspect -f '{{index .Config.Labels "io.longshore.managed"}}' "$local_tag")
  if [ -n "$managed" ] && [ "$managed" != "<no value>" ]; then
    # Built by an older release with the sandbox label: the same files, re-imported
    # without it (seconds; no debootstrap).
    say "re-importing $local_tag without the io.longshore.managed label"
    cid=$(docker create "$local_tag")
    docker export "$cid" | docker import "${changes[@]}" - "$local_tag" >/dev/null
    docker rm "$cid" >/dev/null
  fi
  say "reusing $local_tag"
  echo "$local_tag"
  exit 0
fi
if timeout 120 docker pull -q "$official" >/dev/null 2>&1; then
  echo "$official"
  exit 0
fi

say "$official cannot be pulled here; building $local_tag with debootstrap (once)"
if [ "$(id -u)" != 0 ]; then
  say "building the base needs root (debootstrap); run 'sudo make base-image' once"
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
fi

rootfs=$(mktemp -d /tmp/longshore-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
start=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  say "debootstrap failed; last lines of $rootfs.log:"
  tail -n 20 "$rootfs.log" >&2
  exit 1
}
rm -f "$rootfs.log"
# Trim what a runtime image never needs (the official slim image drops these too).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old

tar -C "$rootfs" -c . | docker import "${changes[@]}" - "$local_tag" >/dev/null
say "built $local_tag in $((SECONDS - start)) s"
echo "$local_tag"
