#!/usr/bin/env bash
# Headless Chromium for the web-demo browser test (Debian packages chromium + chromium-driver;
# Playwright drives it, no browser download). Installs it when missing and we are root (or have
# passwordless sudo); otherwise prints the one command that installs it and lets the test fail.
set -u
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
if [ "$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian chromium for the browser test (apt-get) ..."
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
    && exit 0
fi
echo "make test: $CHROMIUM is missing, so the web-demo browser test will fail; install it with: sudo apt-get install -y chromium chromium-driver"
exit 0
