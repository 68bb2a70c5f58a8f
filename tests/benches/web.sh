#!/usr/bin/env bash
# The web inbox against the CLI, in one run (docs/BENCHMARKS.md, "Web
# inbox"): on a local testnet (1 auth server, 3 peers), how soon a page
# watching /api/events hears of a voicemail bob leaves, against how long
# bob's `vmail leave` takes; and a 30 s voicemail fetched for the page
# (GET /api/voicemail/ID/audio) against `vmail fetch` of another of the
# same size. Release build; everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p vmail-node -p vmail-devnet
VMAIL="$PWD/target/release/vmail"
dir=$(mktemp -d)
daemon=""
cleanup() {
    [[ -n $daemon ]] && kill -- "-$daemon" 2>/dev/null || true
    "$VMAIL" testnet down --dir "$dir/net" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"
"$VMAIL" testnet up --peers 3 --auth-servers 1 --dir "$dir/net" > up.txt 2>&1
eval "$(grep '^export' up.txt)"
export VMAIL_PASSWORD="a long enough password"
for u in alice bob; do
    mkdir -p "homes/$u"
    VMAIL_HOME="homes/$u" "$VMAIL" account register "$u" > /dev/null
done
VMAIL_HOME=homes/bob "$VMAIL" login bob > /dev/null
{ echo "replicas = 2"; cat "$VMAIL_NODE_CONFIG"; } > alice.toml
VMAIL_HOME=homes/alice setsid "$VMAIL" node run --web 127.0.0.1:0 --config alice.toml > alice.out 2>&1 &
daemon=$!
for _ in $(seq 100); do grep -q "web inbox: open" alice.out && break; sleep 0.1; done
VMAIL_HOME=homes/alice "$VMAIL" login alice > /dev/null
VMAIL_HOME=homes/alice "$VMAIL" contacts add bob > /dev/null
"$VMAIL" testnet tone t30.wav --seconds 30 > /dev/null
url=$(grep -o 'http://[^ ]*' alice.out)
VMAIL="$VMAIL" python3 "$OLDPWD/tests/benches/web/measure.py" "$url"
