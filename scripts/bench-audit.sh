#!/usr/bin/env bash
# Audit trail benchmarks (release): the core (seal, append on memory, verify, forwarding queue
# fsyncs) and the SQL store (sustained appends/s with one durable commit each, verification
# records/s) on SQLite and, with scripts/ci/start-postgres.sh, PostgreSQL.
# Writes target/bench/audit.json and target/bench/audit-sql.json.
#   scripts/bench-audit.sh [CORE_RECORDS] [SQL_RECORDS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
AUDIT_BENCH_RECORDS=${1:-100000} cargo bench --locked -p rampart-audit --bench audit
AUDIT_SQL_BENCH_RECORDS=${2:-2000} cargo bench --locked -p rampart-db --bench audit_store
