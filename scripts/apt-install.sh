#!/usr/bin/env bash
# apt_install WHO PACKAGE...: installs Debian packages (as root, or through sudo), saying so on
# stderr as WHO; on failure, updates the package lists once and tries again, then stops with a
# message naming the packages. Sourced by the set-up scripts (zss-node.sh, browser.sh, ...).

apt_install() {
  local who=$1; shift
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  command -v apt-get >/dev/null || { echo "$who: missing: $*; install them with your package manager" >&2; exit 2; }
  echo "$who: installing Debian's $*" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 || {
    $sudo apt-get update -qq >/dev/null 2>&1 || true
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
      { echo "$who: could not install $* with apt-get" >&2; exit 2; }
  }
}
