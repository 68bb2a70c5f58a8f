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

here=$(dirname "$0")
# shellcheck disable=SC2086 # $missing is a list of package names
"$here/../../deploy/apt-install.sh" tests/sip/install.sh $missing

fail() {
    echo "tests/sip/install.sh: $*" >&2
    exit 1
}
command -v sipp >/dev/null 2>&1 || fail "sip-tester installed but sipp is not on PATH"
command -v baresip >/dev/null 2>&1 || fail "baresip installed but not on PATH"
