#!/usr/bin/env bash
# Audit throughput benchmark (release build): seal, append, verify, forwarding queue.
# Writes target/bench/audit.json.   scripts/bench.sh [RECORDS]
set -euo pipefail
cd "$(dirname "$0")/.."
AUDIT_BENCH_RECORDS=${1:-100000} cargo bench --bench audit
