# shellcheck shell=bash
# Shared helpers for deploy/testnet.sh and deploy/scenario.sh (sourced, not run).
#
# Settings, all optional:
#   VMAIL_PROJECT   compose project name (default vmailnet)
#   VMAIL_BIN_DIR   take vmail, vmail-auth and vmail-devnet from here instead
#                   of building them with `cargo build --release`
#   VMAIL_IMAGE     image tag (default vmail-testnet:local)
#   VMAIL_PROMETHEUS_IMAGE  the Prometheus image's tag (default vmail-prometheus:local)
#   VMAIL_PROMETHEUS_PORT   host port (on 127.0.0.1) for Prometheus (default: any free one)

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(dirname "$DEPLOY_DIR")
export VMAIL_PROJECT=${VMAIL_PROJECT:-vmailnet}
export VMAIL_IMAGE=${VMAIL_IMAGE:-vmail-testnet:local}
export VMAIL_PROMETHEUS_IMAGE=${VMAIL_PROMETHEUS_IMAGE:-vmail-prometheus:local}
export VMAIL_PROMETHEUS_PORT=${VMAIL_PROMETHEUS_PORT:-}
# Every service serves Prometheus metrics here (`--metrics 0.0.0.0:PORT`).
METRICS_PORT=9464

die() {
    echo "testnet: $*" >&2
    exit 1
}

# Docker and a compose tool, or a clear message naming what is missing.
# Returns 1 (with the reason in $DOCKER_MISSING) instead of exiting when
# called as `docker_available`.
docker_available() {
    DOCKER_MISSING=""
    if ! command -v docker >/dev/null 2>&1; then
        DOCKER_MISSING="the docker command is not installed (install Docker Engine)"
        return 1
    fi
    if ! docker info >/dev/null 2>&1; then
        DOCKER_MISSING="docker is installed but its daemon does not answer (start it, or check that you may use /var/run/docker.sock)"
        return 1
    fi
    if command -v docker-compose >/dev/null 2>&1; then
        COMPOSE_CMD=(docker-compose)
    elif docker compose version >/dev/null 2>&1; then
        COMPOSE_CMD=(docker compose)
    else
        DOCKER_MISSING="no compose tool: install docker-compose (Debian: apt-get install docker-compose) or the docker compose plugin"
        return 1
    fi
    return 0
}

need_docker() {
    docker_available || die "$DOCKER_MISSING"
}

compose() {
    "${COMPOSE_CMD[@]}" -p "$VMAIL_PROJECT" -f "$DEPLOY_DIR/docker-compose.yml" "$@"
}

# The programs in the image: the peer and CLI, the auth server, and the
# devnet tools (`vmail testnet tone` in a container runs vmail-devnet).
BINARIES=(vmail vmail-auth vmail-devnet)

# Builds the image: FROM scratch, our binaries and exactly the shared
# libraries they link (read off ldd), an empty /tmp, nothing else.
build_image() {
    local bin_dir=${VMAIL_BIN_DIR:-}
    if [[ -z $bin_dir ]]; then
        echo "building ${BINARIES[*]} (cargo build --release)" >&2
        (cd "$ROOT_DIR" && cargo build --release "${BINARIES[@]/#/--bin=}") >&2 ||
            die "cargo build failed"
        bin_dir=$ROOT_DIR/target/release
    fi
    bin_dir=$(cd "$bin_dir" && pwd)
    local bin
    for bin in "${BINARIES[@]}"; do
        [[ -x $bin_dir/$bin ]] || die "$bin_dir/$bin is missing: build it, or unset VMAIL_BIN_DIR"
    done
    # docker-compose.yml runs every service with --metrics.
    "$bin_dir/vmail-auth" start --help 2>/dev/null | grep -q -- --metrics ||
        die "$bin_dir/vmail-auth start has no --metrics option (docker-compose.yml needs it): rebuild it"
    "$bin_dir/vmail" node run --help 2>/dev/null | grep -q -- --metrics ||
        die "$bin_dir/vmail node run has no --metrics option (docker-compose.yml needs it): rebuild it"
    local sum
    sum=$(cat "${BINARIES[@]/#/$bin_dir/}" | sha256sum | cut -c1-16)
    if [[ $(docker image inspect --format '{{ index .Config.Labels "vmail.binaries" }}' "$VMAIL_IMAGE" 2>/dev/null) == "$sum" ]]; then
        echo "image $VMAIL_IMAGE is up to date" >&2
        return 0
    fi
    local rootfs
    rootfs=$(mktemp -d)
    mkdir -p "$rootfs"/{bin,etc,tmp,data,home/vmail}
    chmod 1777 "$rootfs/tmp"
    for bin in "${BINARIES[@]}"; do
        # Debug info is most of a debug build's size; symbols stay for backtraces.
        strip --strip-debug -o "$rootfs/bin/$bin" "$bin_dir/$bin"
    done
    local lib
    for lib in $(for bin in "${BINARIES[@]}"; do ldd "$bin_dir/$bin"; done |
        awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
    # glibc: /etc/hosts first, then Docker's DNS for the service names.
    echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"
    tar -C "$rootfs" -c . | docker import \
        --change "LABEL vmail.binaries=$sum" \
        --change "ENV PATH=/bin" \
        --change "ENV VMAIL_HOME=/home/vmail" \
        --change "WORKDIR /home/vmail" \
        - "$VMAIL_IMAGE" >/dev/null || die "docker import failed"
    echo "built image $VMAIL_IMAGE ($(du -sh "$rootfs" | cut -f1), binaries $sum)" >&2
    rm -rf "$rootfs"
}

# Builds the Prometheus image: FROM scratch, the Debian package's server
# binary (deploy/prometheus/install.sh installs it when missing) and the
# shared libraries it links, its web assets, an empty TSDB directory and the
# directory the peer targets are written to (prometheus_targets). The
# config, deploy/prometheus/prometheus.yml, is mounted by docker-compose.yml.
build_prometheus_image() {
    "$DEPLOY_DIR/prometheus/install.sh" || die "cannot install Prometheus"
    if command -v promtool >/dev/null 2>&1; then
        promtool check rules "$DEPLOY_DIR/prometheus/alerts.yml" >/dev/null ||
            die "deploy/prometheus/alerts.yml is invalid (promtool check rules)"
    fi
    local prom=${VMAIL_PROMETHEUS_BIN:-/usr/bin/prometheus} sum
    # Rebuilt when the binary or this function changes.
    sum=$({ sha256sum <"$prom"; declare -f build_prometheus_image; } | sha256sum | cut -c1-16)
    if [[ $(docker image inspect --format '{{ index .Config.Labels "vmail.prometheus" }}' "$VMAIL_PROMETHEUS_IMAGE" 2>/dev/null) == "$sum" ]]; then
        echo "image $VMAIL_PROMETHEUS_IMAGE is up to date" >&2
        return 0
    fi
    local rootfs lib
    rootfs=$(mktemp -d)
    mkdir -p "$rootfs"/{bin,tmp,prometheus,etc/prometheus/targets,usr/share/prometheus}
    chmod 1777 "$rootfs/tmp"
    cp "$prom" "$rootfs/bin/prometheus"
    for lib in $(ldd "$prom" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
    [[ -d /usr/share/prometheus/web ]] && cp -r /usr/share/prometheus/web "$rootfs/usr/share/prometheus/"
    echo '[]' >"$rootfs/etc/prometheus/targets/peers.json"
    echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"
    tar -C "$rootfs" -c . | docker import \
        --change "LABEL vmail.prometheus=$sum" \
        --change "WORKDIR /prometheus" \
        - "$VMAIL_PROMETHEUS_IMAGE" >/dev/null || die "docker import of the Prometheus image failed"
    echo "built image $VMAIL_PROMETHEUS_IMAGE ($(du -sh "$rootfs" | cut -f1))" >&2
    rm -rf "$rootfs"
}

# Tells Prometheus every peer container (the scaled services peer and
# peer-internal), by name: deploy/prometheus/prometheus.yml reads the file
# this writes. Call it after every `compose up`.
prometheus_targets() {
    local prom file svc c first
    prom=$(containers_of prometheus)
    [[ -n $prom ]] || return 0
    file=$(mktemp)
    {
        echo "["
        first=1
        for svc in peer peer-internal; do
            ((first)) || echo ","
            first=0
            printf '  {"labels": {"service": "%s"}, "targets": [' "$svc"
            local sep=""
            for c in $(containers_of "$svc"); do
                printf '%s"%s:%s"' "$sep" "$(name_of "$c")" "$METRICS_PORT"
                sep=", "
            done
            printf ']}'
        done
        echo
        echo "]"
    } >"$file"
    chmod 644 "$file"
    docker cp "$file" "$prom:/etc/prometheus/targets/peers.json" >/dev/null ||
        { rm -f "$file"; die "cannot write the peer targets into $(name_of "$prom")"; }
    rm -f "$file"
}

# Prometheus's address on the host (127.0.0.1:PORT), from the published port.
prometheus_addr() {
    compose port prometheus 9090 2>/dev/null | tail -1
}

# prom_query EXPR: the result of an instant query, one "LABELS VALUE" line
# per series (LABELS is instance=... or the whole label set); exits 1 when
# Prometheus does not answer or the query fails.
prom_query() {
    local addr out
    addr=$(prometheus_addr)
    [[ -n $addr ]] || return 1
    out=$(curl -sf --max-time 5 --get --data-urlencode "query=$1" "http://$addr/api/v1/query") || return 1
    jq -e -r '.status == "success"' <<<"$out" >/dev/null || return 1
    jq -r '.data.result[] | ((.metric.instance // ([.metric | to_entries[] | "\(.key)=\(.value)"] | join(",")))
        | if . == "" then "-" else . end) + " " + .value[1]' <<<"$out"
}

# Container ids of a service, one per line.
containers_of() {
    compose ps -q "$1" 2>/dev/null
}

# A container's short name (what docker ps shows).
name_of() {
    docker inspect --format '{{ .Name }}' "$1" | sed 's|^/||'
}

# Waits until every running container of the project is healthy.
wait_healthy() {
    local timeout=${1:-180} start=$SECONDS c state bad
    while :; do
        bad=""
        for c in $(compose ps -q); do
            state=$(docker inspect --format '{{ .State.Status }}/{{ if .State.Health }}{{ .State.Health.Status }}{{ end }}' "$c")
            case $state in
                running/healthy | running/) ;;
                *) bad+=" $(name_of "$c"):$state" ;;
            esac
        done
        [[ -z $bad ]] && return 0
        ((SECONDS - start > timeout)) && { echo "not healthy after ${timeout}s:$bad" >&2; return 1; }
        sleep 1
    done
}

# `vmail ARGS` in a running peer container.
in_peer() {
    local c=$1
    shift
    docker exec "$c" /bin/vmail "$@"
}

# The peer id of the daemon in a container.
peer_id_of() {
    in_peer "$1" node status | awk '$1 == "peer" { print $2 }'
}

# Prints "CONTAINER ROLE ATTACHED_TO" for every peer container.
overlay_table() {
    local c status role sn
    for c in $(containers_of sn-1) $(containers_of sn-2) $(containers_of peer) $(containers_of peer-internal); do
        status=$(in_peer "$c" status 2>/dev/null) || { echo "$(name_of "$c") down -"; continue; }
        role=$(awk '$1 == "role" { print $2 }' <<<"$status")
        sn=$(awk '$1 == "attached" && $2 == "to" { print $3 }' <<<"$status")
        echo "$(name_of "$c") $role ${sn:--}"
    done
}

# Waits until the overlay is formed: two supernodes elected, and every
# ordinary peer attached to one of them and relayed there.
wait_overlay() {
    local timeout=${1:-120} start=$SECONDS table
    while :; do
        table=$(overlay_table)
        if [[ $(awk '$2 == "supernode"' <<<"$table" | wc -l) -ge 2 ]] &&
            ! awk '$2 != "supernode" && ($3 == "-" || $3 == "(no")' <<<"$table" | grep . >/dev/null; then
            return 0
        fi
        if ((SECONDS - start > timeout)); then
            echo "the overlay did not form within ${timeout}s:" >&2
            echo "$table" >&2
            return 1
        fi
        sleep 2
    done
}
