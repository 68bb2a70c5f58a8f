#!/bin/sh
# Installs the external SIP test clients when they are missing:
#   sipp    (Debian package sip-tester)
#   baresip (Debian package baresip)
# Idempotent: does nothing when both are on PATH. Needs root (or sudo)
# and apt-get only when something is missing.
set -eu

missing=""
command -v sipp >/dev/null 2>&1 || missing="$missing sip-tester"
command -v baresip >/dev/null 2>&1 || missing="$missing baresip"
[ -z "$missing" ] && exit 0

fail() {
    echo "tests/sip/install.sh: $*" >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 ||
    fail "apt-get not found: install the Debian packages$missing by hand"

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
else
    fail "not root and no sudo: install the Debian packages$missing by hand"
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
$SUDO apt-get update -q >"$log" 2>&1 ||
    { cat "$log" >&2; fail "apt-get update failed"; }
# shellcheck disable=SC2086 # $missing is a list of package names
$SUDO apt-get install -y -q --no-install-recommends $missing >"$log" 2>&1 ||
    { cat "$log" >&2; fail "apt-get install$missing failed"; }

command -v sipp >/dev/null 2>&1 || fail "sip-tester installed but sipp is not on PATH"
command -v baresip >/dev/null 2>&1 || fail "baresip installed but not on PATH"
