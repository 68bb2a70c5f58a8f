#!/usr/bin/env bash
# The vmail testnet across containers (deploy/docker-compose.yml).
#
#   deploy/testnet.sh up [--peers N] [--internal M]   build the image, start, wait until the overlay has formed
#   deploy/testnet.sh status                          containers, the auth group, each peer's role and supernode, Prometheus
#   deploy/testnet.sh logs [-f] [SERVICE...]          the containers' logs
#   deploy/testnet.sh cli USER ARGS...                `vmail ARGS` as USER in a one-off client container
#   deploy/testnet.sh down [--volumes]                stop and remove the containers (--volumes: and the data)
#   deploy/testnet.sh scenario                        the fault scenario on a testnet of its own (deploy/scenario.sh)
#
# See lib.sh for the settings (VMAIL_PROJECT, VMAIL_BIN_DIR, VMAIL_IMAGE,
# VMAIL_PROMETHEUS_IMAGE, VMAIL_PROMETHEUS_PORT).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() {
    sed -n '3,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

cmd_up() {
    local peers=5 internal=3
    while (($#)); do
        case $1 in
            --peers) peers=$2; shift 2 ;;
            --internal) internal=$2; shift 2 ;;
            *) usage ;;
        esac
    done
    [[ $peers =~ ^[0-9]+$ && $internal =~ ^[0-9]+$ ]] || die "--peers and --internal take a number"
    ((peers + internal >= 2)) || die "run at least 2 ordinary peers"
    need_docker
    build_image
    build_prometheus_image
    compose up -d --scale peer="$peers" --scale peer-internal="$internal" ||
        die "compose up failed; see deploy/testnet.sh logs"
    prometheus_targets
    echo "waiting for every container to be healthy" >&2
    wait_healthy 180 || die "see deploy/testnet.sh logs"
    echo "waiting for the overlay: supernodes elected, every peer attached" >&2
    wait_overlay 120 || die "see deploy/testnet.sh logs"
    cmd_status
    cat >&2 <<EOF

The testnet is up. Try:
  deploy/testnet.sh cli bob account register bob      (asks for a password; or VMAIL_PASSWORD=...)
  docker exec -it $(name_of "$(containers_of peer | head -1)") vmail status
  deploy/testnet.sh logs -f sn-1
  curl -s http://$(prometheus_addr)/api/v1/query --data-urlencode query=vmail_auth_raft_is_leader   (Prometheus)
  deploy/testnet.sh down [--volumes]
EOF
}

cmd_status() {
    need_docker
    compose ps
    local auth
    for auth in auth-1 auth-2 auth-3; do
        local c
        c=$(containers_of "$auth")
        if [[ -n $c ]] && docker exec "$c" /bin/vmail-auth cluster status --data-dir /data 2>/dev/null; then
            break
        fi
    done
    echo
    printf '%-28s %-10s %s\n' CONTAINER ROLE "ATTACHED TO"
    overlay_table | while read -r name role sn; do
        printf '%-28s %-10s %s\n' "$name" "$role" "$sn"
    done
    local addr
    addr=$(prometheus_addr)
    if [[ -n $addr ]]; then
        echo
        local n_up n_all down
        if n_up=$(prom_query 'count(up == 1)' | awk '{ print $2 }') &&
            n_all=$(prom_query 'count(up)' | awk '{ print $2 }') &&
            down=$(prom_query 'up == 0' | awk '{ print $1 }' | xargs); then
            echo "Prometheus: http://$addr/ (scrapes every service each second): ${n_up:-0} of ${n_all:-0} targets up${down:+; down: $down}"
        else
            echo "Prometheus: http://$addr/ does not answer"
        fi
    fi
}

cmd_logs() {
    need_docker
    compose logs "$@"
}

cmd_cli() {
    (($# >= 2)) || die "usage: deploy/testnet.sh cli USER ARGS... (runs vmail ARGS with VMAIL_HOME=/home/USER)"
    local user=$1
    shift
    [[ $user =~ ^[a-z0-9_-]+$ ]] || die "USER must be lower-case letters, digits, '-' or '_'"
    need_docker
    local tty=()
    [[ -t 0 && -t 1 ]] || tty=(-T)
    compose run --rm --no-deps "${tty[@]}" -e VMAIL_HOME="/home/$user" \
        ${VMAIL_PASSWORD:+-e VMAIL_PASSWORD} client /bin/vmail "$@"
}

cmd_down() {
    need_docker
    local volumes=()
    case ${1:-} in
        --volumes) volumes=(--volumes) ;;
        "") ;;
        *) usage ;;
    esac
    compose --profile cli down --remove-orphans "${volumes[@]}"
}

case ${1:-} in
    up) shift; cmd_up "$@" ;;
    status) cmd_status ;;
    logs) shift; cmd_logs "$@" ;;
    cli) shift; cmd_cli "$@" ;;
    down) shift; cmd_down "$@" ;;
    scenario) shift; exec "$DEPLOY_DIR/scenario.sh" "$@" ;;
    *) usage ;;
esac
