#!/usr/bin/env bash
# System packages the tests use beyond the Python env: headless Chromium (Debian package `chromium`) for the
# viewer screenshot test (tests/test_view.py). Needs root and apt-get; without them it says so and exits 0, and
# the screenshot test skips with that reason. Safe to run again (does nothing when chromium is installed).
#
#   scripts/install-system-deps.sh          install what is missing
set -uo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: chromium missing and no root apt-get to install it (the screenshot test skips)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1; then
    apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 \
        || echo "install-system-deps: apt-get could not install chromium (the screenshot test skips)" >&2
fi
exit 0
