#!/usr/bin/env bash
# The auth group benchmark with its etcd reference: installs etcd (Debian's
# etcd-server package) when it is missing, then runs the benchmark, which
# starts a three-member etcd cluster on loopback beside our own groups and
# prints the table for docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ -z "${VMAIL_ETCD:-}" && ! -x /usr/bin/etcd ]]; then
    echo "== installing etcd-server (Debian)" >&2
    sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    # Where an init system runs, the package also starts a system etcd on
    # port 2379; the benchmark's members use free ports of their own.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server >&2
fi

exec cargo bench -p vmail-tests --bench cluster "$@"
