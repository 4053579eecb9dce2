#!/usr/bin/env bash
# Install Debian's Chromium for the UI tests (they drive it through Playwright's executable_path;
# no browser is downloaded by a test tool).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install_browser: run as root on Debian, or install the 'chromium' package yourself" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
