#!/usr/bin/env bash
# Install the Debian packages the multi-host tests (tests/multihost) need: openssh-server (sshd in each test
# host), postgresql (the shared MLflow backend store) and iproute2 (`ip netns`, bridges, veth pairs).
#
# Usage: scripts/install-test-system-deps.sh
# Idempotent and silent when everything is present; prints what it installs. Without root it installs nothing
# and exits 0 with a note (the multi-host tests then skip, saying why). No package's service is started: the
# tests run their own sshd and PostgreSQL inside temporary directories.
set -euo pipefail

POLICY_FILE=/usr/sbin/policy-rc.d
CREATED_POLICY=0

note() { printf 'install-test-system-deps: %s\n' "$*"; }

find_initdb() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

missing_packages() {
  [ -x /usr/sbin/sshd ] || echo openssh-server
  find_initdb || echo postgresql
  command -v ip >/dev/null 2>&1 || echo iproute2
}

# Debian's postinst scripts start daemons unless policy-rc.d forbids it (container images ship one that does).
forbid_service_starts() {
  if [ ! -e "$POLICY_FILE" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY_FILE"
    chmod 755 "$POLICY_FILE"
    CREATED_POLICY=1
  fi
}

restore_service_policy() {
  if [ "$CREATED_POLICY" = 1 ]; then rm -f "$POLICY_FILE"; fi
}

main() {
  local packages
  mapfile -t packages < <(missing_packages)
  [ ${#packages[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    note "not root: not installing ${packages[*]} (the multi-host tests will be skipped)"
    return 0
  fi
  note "installing ${packages[*]}"
  trap restore_service_policy EXIT
  forbid_service_starts
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install --yes --quiet --no-install-recommends "${packages[@]}" >/dev/null 2>&1; then
    apt-get update --quiet >/dev/null
    apt-get install --yes --quiet --no-install-recommends "${packages[@]}" >/dev/null
  fi
  note "installed ${packages[*]}"
}

main
