#!/usr/bin/env bash
# Install what the dashboard's browser test needs: Debian's headless Chromium and Playwright's
# Python package, which drives that Chromium (executable_path=/usr/bin/chromium). Playwright's
# own browser download ("playwright install") is never used: CI machines reach only package
# registries. Idempotent and non-interactive; safe to run on every CI run.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if ! python3 -c "import playwright.sync_api" >/dev/null 2>&1; then
    python3 -m pip install --quiet "playwright>=1.40"
fi

chromium --version 2>/dev/null  # the Debian wrapper prints a harmless shell warning
python3 -c "import importlib.metadata as m; print('playwright', m.version('playwright'))"
