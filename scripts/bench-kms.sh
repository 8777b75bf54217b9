#!/usr/bin/env bash
# Key service throughput in process on the embedded SoftHSM2 (1 KiB encrypt/decrypt), beside the
# software stand-in and raw AES-256-GCM on one core (the physical limit).
# Result: target/bench/kms-hsm.json. Usage: scripts/bench-kms.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
apt_install softhsm2 "${BUILD_PACKAGES[@]}"
need_cargo
BENCH_SECONDS="${1:-3}" BENCH_OUT="$PWD/target/bench/kms-hsm.json" \
  cargo bench --locked -p rampart-kms --features insecure-software-backend --bench kms_throughput
