#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/test_viz.py, tests/browser.py).
#
# They drive /usr/bin/chromium with the playwright Python package (pinned in pyproject.toml).
# Playwright's own `playwright install` is never used: it downloads browser builds from the
# internet, which the course does not need after installation. Without Chromium the browser
# tests skip, saying so. Idempotent: does nothing when Chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "install_browser.sh: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi
packages=(chromium fonts-liberation)  # fonts: token labels need a font to be drawn
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: no apt-get here: install Chromium as /usr/bin/chromium with your" \
         "package manager, or the browser tests in tests/test_viz.py will skip" >&2
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_browser.sh: not root; to run the browser tests, install Chromium with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${packages[*]}" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}"; then
    echo "install_browser.sh: $(/usr/bin/chromium --version 2>/dev/null) installed"
else
    echo "install_browser.sh: WARNING: apt-get could not install Chromium; the browser tests" \
         "will skip" >&2
fi
