#!/usr/bin/env bash
# Volume backup throughput: full and incremental (1 % changed) backup of a LUKS local volume
# full of random bytes through its QEMU FUSE export into restic, restore into a new volume, and
# `restic backup --stdin` of the same raw bytes from a plain file in the same run (baseline)
# (crates/rampart-backup/examples/bench_backup.rs). Result: target/bench/backup.json. Root
# (FUSE mounts of qemu-storage-daemon).
# Usage: scripts/bench-backup.sh [GIB]   (volume size, default 1)
# Environment: BENCH_DIR (where the pool and repositories go, default target/).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
apt_install qemu-utils restic "${BUILD_PACKAGES[@]}"
need_cargo
mkdir -p target/bench
cargo build --workspace --locked -q --example bench_backup
BENCH_GIB="${1:-1}" BENCH_OUT="$PWD/target/bench/backup.json" BENCH_DIR="${BENCH_DIR:-$PWD/target}" \
  target/debug/examples/bench_backup
echo "written: target/bench/backup.json" >&2
