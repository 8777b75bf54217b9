#!/usr/bin/env bash
# Volume I/O through QEMU's block layer, plain raw file vs LUKS local volume in the same run
# (`qemu-img bench`: sequential 1 MiB and scattered 4 KiB, read and write, O_DIRECT, depth 16),
# plus create-from-image and verified-wipe time per GiB through the local backend
# (crates/rampart-storage/examples/bench_storage.rs). Result: target/bench/storage.json.
# Usage: scripts/bench-storage.sh [GIB]   (volume size, default 1)
# Environment: BENCH_DIR (where the pool and files go, default target/; the same filesystem
# for both sides).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
apt_install qemu-utils qemu-system-common "${BUILD_PACKAGES[@]}"
need_cargo
mkdir -p target/bench
# The dev profile builds the dependencies optimised (Cargo.toml) and shares the test build's
# artifacts; the timed work runs in qemu-img and in the kernel, not in unoptimised code.
cargo build --workspace --locked -q --example bench_storage
BENCH_GIB="${1:-1}" BENCH_OUT="$PWD/target/bench/storage.json" BENCH_DIR="${BENCH_DIR:-$PWD/target}" \
  target/debug/examples/bench_storage
echo "written: target/bench/storage.json" >&2
