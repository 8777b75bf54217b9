#!/usr/bin/env bash
# Key service throughput on the embedded SoftHSM2 (1 KiB encrypt/decrypt), beside raw
# AES-256-GCM on one core. Result: target/bench/kms-hsm.json. Usage: scripts/bench.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e /usr/lib/softhsm/libsofthsm2.so ]; then
    echo "softhsm2 is not installed: apt-get install -y softhsm2" >&2
    exit 1
fi
BENCH_SECONDS="${1:-3}" cargo bench --features insecure-software-backend --bench kms_throughput
