#!/usr/bin/env bash
# Installs Debian's PostgreSQL server when the machine lacks it, for the fleet's tests
# (tests/test_registry.py, tests/test_fleet.py): they start a throwaway cluster of their own
# with its initdb and pg_ctl, as the postgres user, on a unix socket. Run as root (CI is).
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  as_root=(sudo -n)
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql >/dev/null
ls -d /usr/lib/postgresql/*/bin
