#!/bin/sh
# Installs what the compose testnet's monitoring needs, from Debian, when it
# is missing: the Prometheus server (package prometheus; deploy/lib.sh builds
# the Prometheus image around /usr/bin/prometheus) and curl and jq (the
# scenario asks Prometheus's HTTP API with them). Idempotent: does nothing
# when all are there. Needs root (or sudo) and apt-get only when something is
# missing.
set -eu

PROMETHEUS=${VMAIL_PROMETHEUS_BIN:-/usr/bin/prometheus}
missing=""
[ -x "$PROMETHEUS" ] || missing="$missing prometheus"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v jq >/dev/null 2>&1 || missing="$missing jq"
[ -z "$missing" ] && exit 0

fail() {
    echo "deploy/prometheus/install.sh: $*" >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 ||
    fail "apt-get not found: install$missing by hand (VMAIL_PROMETHEUS_BIN may point at a Prometheus server binary)"

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
# Where systemd runs, the prometheus package also enables a service on :9090;
# the testnet uses only the binary (`systemctl disable --now prometheus`).
# shellcheck disable=SC2086 # $missing is a list of package names
$SUDO apt-get install -y -q --no-install-recommends $missing >"$log" 2>&1 ||
    { cat "$log" >&2; fail "apt-get install$missing failed"; }

[ -x "$PROMETHEUS" ] || fail "prometheus installed but $PROMETHEUS is missing"
command -v curl >/dev/null 2>&1 || fail "curl installed but not on PATH"
command -v jq >/dev/null 2>&1 || fail "jq installed but not on PATH"
