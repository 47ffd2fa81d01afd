#!/usr/bin/env bash
# Runs udm's benchmarks against the bench cluster `make bench` started. Each benchmark runs udm
# and its baseline side by side in one run and prints ratios.
#
#   bench/run.sh            all benchmarks
#   bench/run.sh onboarding add_field      some of them (make bench BENCH="onboarding")
set -euo pipefail
cd "$(dirname "$0")/.."
all=(onboarding add_field query batch audit locks access tenants graphql transfer http encryption)
selected=("$@")
[ ${#selected[@]} -eq 0 ] && selected=("${all[@]}")
cargo build -q --release -p udm-bench -p udm-tenant -p udm-server
for b in "${selected[@]}"; do
    if [ ! -f "bench/src/bin/$b.rs" ]; then
        echo "unknown benchmark $b (have: ${all[*]})" >&2
        exit 2
    fi
    "target/release/$b"
done
