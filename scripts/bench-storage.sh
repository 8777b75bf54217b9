#!/usr/bin/env bash
# Volume I/O through QEMU's block layer, plain raw file vs LUKS local volume in the same run
# (`qemu-img bench`: sequential 1 MiB and scattered 4 KiB, read and write, O_DIRECT, depth 16),
# and the same LUKS volume on Ceph (qcow2+LUKS over its rbd-fuse file, a 256 MiB volume),
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
# The "LUKS on Ceph" rows: a throwaway single-node cluster (stopped at the end unless
# BENCH_KEEP_CEPH=1; an already-running one is reused).
if [ -z "${RAMPART_TEST_CEPH_CONF:-}" ]; then
  eval "$(scripts/ci/start-ceph.sh)"
  [ "${BENCH_KEEP_CEPH:-}" = 1 ] || trap 'scripts/ci/start-ceph.sh stop' EXIT
fi
BENCH_GIB="${1:-1}" BENCH_OUT="$PWD/target/bench/storage.json" BENCH_DIR="${BENCH_DIR:-$PWD/target}" \
  target/debug/examples/bench_storage
echo "written: target/bench/storage.json" >&2
