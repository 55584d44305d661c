#!/usr/bin/env bash
# Installs what the dashboard's browser test (registry-cli/tests/dashboard.rs) needs: Debian's
# Chromium and Node.js, and npm's playwright-core (pinned) to drive it. playwright-core ships no
# browser and downloads none: the test launches the system Chromium (/usr/bin/chromium) through
# `executablePath`. Reruns reuse the installation.
#
# playwright-core is pinned to 1.61.1, the last release that runs on Debian bookworm's Node.js 18
# (1.62 and later need Node 20).
#
# Sourced by scripts/test (sets REGISTRY_PLAYWRIGHT_DIR); can be run alone.
set -euo pipefail

PLAYWRIGHT_CORE_VERSION=1.61.1
BROWSER_DIR="${REGISTRY_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/service-registry/testbed}/browser"

br_die() { echo "browser: $*" >&2; exit 2; }

# shellcheck source=scripts/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

browser_up() {
  local missing=()
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  # Fonts for readable screenshots (Chromium's package only recommends them).
  [ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)
  [ ${#missing[@]} -eq 0 ] || apt_install browser "${missing[@]}"
  [ -x /usr/bin/chromium ] || br_die "missing /usr/bin/chromium (Debian: chromium)"
  mkdir -p "$BROWSER_DIR"
  local manifest
  manifest='{
  "name": "registry-dashboard-browser-test",
  "private": true,
  "dependencies": { "playwright-core": "'"$PLAYWRIGHT_CORE_VERSION"'" }
}'
  if [ ! -f "$BROWSER_DIR/package.json" ] || [ "$(cat "$BROWSER_DIR/package.json")" != "$manifest" ] ||
     [ ! -d "$BROWSER_DIR/node_modules/playwright-core" ]; then
    echo "browser: installing playwright-core $PLAYWRIGHT_CORE_VERSION from npm (no browser download)" >&2
    printf '%s\n' "$manifest" > "$BROWSER_DIR/package.json"
    (cd "$BROWSER_DIR" &&
      PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --loglevel=error \
        >"$BROWSER_DIR/npm-install.log" 2>&1) ||
      br_die "npm install failed; see $BROWSER_DIR/npm-install.log"
  fi
  node -e "require('$BROWSER_DIR/node_modules/playwright-core')" 2>/dev/null ||
    br_die "playwright-core does not load; see $BROWSER_DIR/npm-install.log"
  # A real start (headless, as the test runs it), not only --version.
  timeout 120 /usr/bin/chromium --headless --no-sandbox --disable-gpu --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --dump-dom 'data:text/html,<p>chromium-ok</p>' 2>/dev/null | grep -q chromium-ok ||
    br_die "/usr/bin/chromium does not start headless (run it by hand to see why)"
  export REGISTRY_PLAYWRIGHT_DIR="$BROWSER_DIR/node_modules"
  echo "browser: ready ($(/usr/bin/chromium --version 2>/dev/null | head -1); $REGISTRY_PLAYWRIGHT_DIR)" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  browser_up
  echo "export REGISTRY_PLAYWRIGHT_DIR=$REGISTRY_PLAYWRIGHT_DIR"
fi
