#!/usr/bin/env bash
# Writes the compose env file (default `.env`) when it is missing, and fills in
# any of its values that are empty: fresh secrets (internal token, the first API
# key "admin", the dashboard's key and session secret, the postgres password),
# the gateway's key list holding only their SHA-256 hashes, and DOCKER_GID from
# the engine socket. A non-empty value is never changed, so credentials stay
# stable across `make up` runs. For a new file, a variable set in the calling
# environment wins over .env.example's default (tests use this for ports etc.).
# The retired LONGSHORE_{GATEWAY,DASHBOARD}_{BIND,PORT} become *_PUBLISH on
# loopback, keeping the port (the old default published the gateway on 0.0.0.0).
# Usage: scripts/compose-env.sh [ENV_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-.env}
socket=${LONGSHORE_DOCKER_SOCKET:-/var/run/docker.sock}
docker_gid=$(stat -c %g "$socket" 2>/dev/null || echo 0)

DOCKER_GID_DETECTED=$docker_gid python3 - "$target" .env.example <<'PY'
import hashlib
import os
import secrets
import sys
from pathlib import Path

target, example = Path(sys.argv[1]), Path(sys.argv[2])
created = not target.exists()
lines = (example if created else target).read_text(encoding="utf-8").splitlines()


def new_key() -> str:
    # Same shape as services.gateway.auth.new_key (lsk_ + 43 URL-safe characters).
    return "lsk_" + secrets.token_urlsafe(32)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


values: dict[str, str] = {}
order: list[str] = []
for line in lines:
    key, sep, value = line.partition("=")
    if sep and not line.lstrip().startswith("#"):
        values[key.strip()] = value.strip()
        order.append(key.strip())

if created:
    for key in order:
        if key in os.environ:
            values[key] = os.environ[key]

filled: list[str] = []

# Retired: the old .env.example wrote LONGSHORE_GATEWAY_BIND=0.0.0.0 into every
# .env, so an explicit choice cannot be told from the default: the port carries
# over, the address does not. Opening it again is one visible line (*_PUBLISH).
retired: set[str] = set()
for svc in ("GATEWAY", "DASHBOARD"):
    bind, port = f"LONGSHORE_{svc}_BIND", f"LONGSHORE_{svc}_PORT"
    publish = f"LONGSHORE_{svc}_PUBLISH"
    if port in values or bind in values:
        retired |= {bind, port}
        old_port = values.pop(port, "") or ("50051" if svc == "GATEWAY" else "8080")
        values.pop(bind, None)
        if not values.get(publish):
            values[publish] = f"127.0.0.1:{old_port}"
            filled.append(publish)
            print(
                f"compose-env: {publish}=127.0.0.1:{old_port} replaces the retired {bind} and "
                f"{port} (set {publish}=0.0.0.0:{old_port} to publish on every interface)",
                file=sys.stderr,
            )


def fill(key, make):
    if not values.get(key):
        values[key] = make()
        filled.append(key)


fill("COMPOSE_PROJECT_NAME", lambda: "longshore")
fill("LONGSHORE_INTERNAL_TOKEN", lambda: secrets.token_urlsafe(32))
fill("LONGSHORE_API_KEY", new_key)
fill("LONGSHORE_DASHBOARD_API_KEY", new_key)
fill("LONGSHORE_DASHBOARD_SESSION_SECRET", lambda: secrets.token_urlsafe(48))
fill("LONGSHORE_POSTGRES_PASSWORD", lambda: secrets.token_urlsafe(24))
fill(
    "LONGSHORE_GATEWAY_API_KEYS",
    lambda: f"admin:admin:{sha256(values['LONGSHORE_API_KEY'])},"
    f"dashboard:read+write:{sha256(values['LONGSHORE_DASHBOARD_API_KEY'])}",
)
fill("DOCKER_GID", lambda: os.environ["DOCKER_GID_DETECTED"])

out: list[str] = []
seen: set[str] = set()
for line in lines:
    key, sep, _ = line.partition("=")
    key = key.strip()
    if sep and not line.lstrip().startswith("#") and key in retired:
        continue
    if sep and not line.lstrip().startswith("#") and key in values:
        out.append(f"{key}={values[key]}")
        seen.add(key)
    else:
        out.append(line)
out += [f"{key}={values[key]}" for key in values if key not in seen]
if created or filled:
    target.write_text("\n".join(out) + "\n", encoding="utf-8")
    target.chmod(0o600)
what = "wrote" if created else ("filled " + ", ".join(filled) + " in") if filled else "kept"
print(f"compose-env: {what} {target}", file=sys.stderr)
PY
