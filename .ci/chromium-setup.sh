#!/usr/bin/env bash
# Debian's chromium for the headless-browser test of the viewer pages (tests/test_viewer_browser.py).
#
# Run as root on Debian 12 (or Ubuntu); idempotent: a second run finds chromium installed and changes nothing.
# Only the package is installed: the test starts chromium itself, one headless process per page, and it exits
# with the test, so there is nothing to stop afterwards.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ((EUID != 0)); then
    echo "chromium-setup.sh: chromium is not installed and installing it needs root: run this as root" >&2
    exit 3
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null
