#!/bin/sh
# Installs what the compose testnet's monitoring needs, from Debian, when it
# is missing: the Prometheus server (package prometheus; deploy/lib.sh builds
# the Prometheus image around /usr/bin/prometheus) and curl and jq (the
# scenario asks Prometheus's HTTP API with them). Idempotent: does nothing
# when all are there. Needs root (or sudo) and apt-get only when something is
# missing; VMAIL_PROMETHEUS_BIN may point at a Prometheus server binary
# instead.
set -eu

PROMETHEUS=${VMAIL_PROMETHEUS_BIN:-/usr/bin/prometheus}
missing=""
[ -x "$PROMETHEUS" ] || missing="$missing prometheus"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v jq >/dev/null 2>&1 || missing="$missing jq"
[ -z "$missing" ] && exit 0

# Where systemd runs, the prometheus package also enables a service on :9090;
# the testnet uses only the binary (`systemctl disable --now prometheus`).
here=$(dirname "$0")
# shellcheck disable=SC2086 # $missing is a list of package names
"$here/../apt-install.sh" deploy/prometheus/install.sh $missing

fail() {
    echo "deploy/prometheus/install.sh: $*" >&2
    exit 1
}
[ -x "$PROMETHEUS" ] || fail "prometheus installed but $PROMETHEUS is missing"
command -v curl >/dev/null 2>&1 || fail "curl installed but not on PATH"
command -v jq >/dev/null 2>&1 || fail "jq installed but not on PATH"
