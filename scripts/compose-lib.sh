# Shared by scripts/compose-up.sh and scripts/compose-down.sh (sourced, not run).
#   LONGSHORE_ENV_FILE       env file (default .env at the repo root)
#   LONGSHORE_COMPOSE_FILES  extra compose files, space-separated (tests add one)
#   PROFILES                 optional profiles, space-separated: postgres tracing

# Reads KEY's value from the env file (no shell evaluation of the file).
env_get() {
  local line
  line=$(grep -E "^$1=" "$env_file" 2>/dev/null | tail -n 1) || true
  printf '%s' "${line#*=}"
}

# Sets KEY=VALUE in the env file, replacing an existing line or appending one.
env_set() {
  if grep -qE "^$1=" "$env_file"; then
    local tmp
    tmp=$(mktemp "$env_file.XXXXXX")
    awk -v k="$1" -v v="$2" 'index($0, k "=") == 1 { print k "=" v; next } { print }' \
      "$env_file" >"$tmp"
    chmod 600 "$tmp"
    mv "$tmp" "$env_file"
  else
    printf '%s=%s\n' "$1" "$2" >>"$env_file"
  fi
}

# Compose v2 when the engine has it, else docker-compose (1.29 on Debian).
compose_cmd() {
  if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
  else
    return 1
  fi
}

# The full compose invocation: files, env file, project and profiles.
compose_args() {
  args=(-f compose.yaml)
  local extra
  for extra in ${LONGSHORE_COMPOSE_FILES:-}; do args+=(-f "$extra"); done
  [ -f "$env_file" ] && args+=(--env-file "$env_file")
  args+=(-p "$project")
  local profile
  for profile in ${PROFILES:-}; do args+=(--profile "$profile"); done
}

env_file=${LONGSHORE_ENV_FILE:-.env}
