#!/usr/bin/env bash
# The overlay at N real peer processes on this machine: start-up to
# convergence, re-attach, provider lookups, 1 MiB leave and fetch, memory,
# idle CPU and traffic per peer (docs/BENCHMARKS.md, "Scale: real peer
# processes"). Arguments go to `vmail-devnet scale`, e.g.
#   tests/benches/scale.sh --peers 20,50,100,200
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p vmail-node -p vmail-devnet
exec target/release/vmail-devnet scale "$@"
