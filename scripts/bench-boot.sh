#!/usr/bin/env bash
# Boot benchmark through the API (root, QEMU under TCG): `rampart up`, the signed demo guest
# uploaded, then RUNS instances each timed from `POST /v1/projects/{p}/instances` to the boot
# marker in the console the API serves, beside RUNS bare `qemu-system-x86_64` boots of the same
# kernel and initramfs with the driver's machine/accelerator flags; plus the host memory of an
# idle VM (QEMU RSS and its cgroup's memory). Writes target/bench/boot-api.json.
#   scripts/bench-boot.sh [RUNS]        (default 5)
#   PROFILE=test scripts/bench-boot.sh  (reuse the debug test build; the controller and agent then
#                                        hash and copy images slower, so API figures are higher)
# The figures depend on the machine's load: the JSON records the load average at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
[[ $(id -u) == 0 ]] || { echo "bench-boot.sh: needs root (confined QEMU, cgroups)" >&2; exit 1; }
RAMPART_BOOT_BENCH_RUNS=${1:-5} RAMPART_TEST_REQUIRE_ROOT=1 \
    cargo test --locked --profile "${PROFILE:-release}" -p rampart --test compute_e2e -- --nocapture --test-threads 1
cat target/bench/boot-api.json
