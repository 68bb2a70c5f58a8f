#!/bin/sh
# Installs the headless browser the web inbox test drives, when missing:
#   chromium     (Debian package chromium)
#   chromedriver (Debian package chromium-driver)
# Idempotent: does nothing when both are on PATH. Needs root (or sudo)
# and apt-get only when something is missing.
set -eu

missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
[ -z "$missing" ] && exit 0

here=$(dirname "$0")
# shellcheck disable=SC2086 # $missing is a list of package names
"$here/../../deploy/apt-install.sh" tests/web/install.sh $missing

fail() {
    echo "tests/web/install.sh: $*" >&2
    exit 1
}
command -v chromium >/dev/null 2>&1 || fail "chromium installed but not on PATH"
command -v chromedriver >/dev/null 2>&1 || fail "chromium-driver installed but chromedriver is not on PATH"
