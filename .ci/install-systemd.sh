#!/usr/bin/env bash
# Installs systemd's offline tools (systemd-analyze, systemd-sysusers, systemd-tmpfiles, and
# libseccomp with them) from Debian's packages when the machine lacks them, for
# tests/test_systemd_unit.py. Does nothing where they are present; never starts systemd.
# Run as root (CI is), or with sudo available.
set -euo pipefail

if command -v systemd-analyze >/dev/null && command -v systemd-sysusers >/dev/null \
    && command -v systemd-tmpfiles >/dev/null; then
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  as_root=(sudo -n)
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold systemd >/dev/null
systemd-analyze --version | head -n 1
