#!/bin/bash
# Boot benchmark: bare QEMU vs Rampart's driver path, p50 over RUNS (default 5), as root.
# Writes target/bench/boot.json. Numbers depend on the load of the machine: the JSON records
# the load average at the end of the run.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${1:-5}
"$HERE/scripts/build-demo-image.sh" "$HERE/target/demo-image" >/dev/null
mkdir -p "$HERE/target/bench"
cd "$HERE"
cargo run -q --example boot_bench -- "$HERE/target/demo-image" "$RUNS" | tee "$HERE/target/bench/boot.json"
