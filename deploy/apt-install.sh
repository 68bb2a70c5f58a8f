#!/bin/sh
# Installs Debian packages for one of the project's install scripts
# (tests/sip/install.sh, tests/web/install.sh, deploy/prometheus/install.sh):
#
#   deploy/apt-install.sh CALLER PACKAGE...
#
# Needs apt-get, and root or sudo; each error names CALLER and what to do.
set -eu

caller=$1
shift
fail() {
    echo "$caller: $*" >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 ||
    fail "apt-get not found: install the Debian packages $* by hand"

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
else
    fail "not root and no sudo: install the Debian packages $* by hand"
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
$SUDO apt-get update -q >"$log" 2>&1 ||
    { cat "$log" >&2; fail "apt-get update failed"; }
$SUDO apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1 ||
    { cat "$log" >&2; fail "apt-get install $* failed"; }
