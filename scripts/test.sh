#!/usr/bin/env bash
# Runs the whole test suite the way CI does: installs what is missing, starts a throwaway
# PostgreSQL (TLS on) so the DB tier runs on both backends, then format check, clippy and
# every test: unit, golden, DB, simulated cluster, privileged (as root) and end to end.
# Golden files are compared byte for byte; REGENERATE=1 in the environment rewrites them instead.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
apt_install "${BUILD_PACKAGES[@]}" "${RUNTIME_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
install_compute_packages
need_cargo

eval "$(scripts/ci/start-postgres.sh)"
export RAMPART_TEST_REQUIRE_POSTGRES=1
# One throwaway Ceph (mon, mgr, 2 OSDs on 127.0.0.1, ~20 s) for the whole run; the Ceph tests
# make and remove their own pools in it. Stopped and removed at the end.
eval "$(scripts/ci/start-ceph.sh)"
export RAMPART_TEST_REQUIRE_CEPH=1
export RAMPART_TEST_REQUIRE_HSM=1
# In CI nothing may skip: a test that lacks root, a command or a service fails. Elsewhere the
# privileged tests skip for a user who is not root, and the last line says how many did.
if [ "${CI:-}" = true ] || [ "$(id -u)" = 0 ]; then export RAMPART_TEST_REQUIRE_ROOT=1; fi
RAMPART_TEST_SKIP_LOG=$(mktemp "${TMPDIR:-/tmp}/rampart-skips.XXXXXX")
export RAMPART_TEST_SKIP_LOG
trap 'scripts/ci/skip-summary.sh "$RAMPART_TEST_SKIP_LOG"; rm -f "$RAMPART_TEST_SKIP_LOG"; scripts/ci/start-ceph.sh stop' EXIT

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast
  cargo test --locked --workspace --doc
else
  cargo test --locked --workspace --no-fail-fast
fi
