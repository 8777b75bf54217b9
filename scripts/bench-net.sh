#!/usr/bin/env bash
# Tenant-networking benchmarks, as root (they build namespaces, bridges and nft tables; no packet
# leaves the machine: everything runs between namespaces created here and on 127.0.0.1):
#   rule      API call → enforced rule, p50/p99 at 10/100/1000 ports, through `rampart up`
#             (crates/rampart/benches/net_rule_latency.rs)  → target/bench/net-rule-latency.json
#   apply     nft transaction time against ruleset size (100/1000/10000 rules), full load and
#             one rule changed (crates/rampart-net/examples/bench_dataplane.rs) → target/bench/net-apply.json
#   tput      TCP throughput and new connections/s between two namespaces across the VPC
#             datapath, 10000 rules vs none (same example)  → target/bench/net-throughput.json
# Usage: scripts/bench-net.sh [rule|apply|tput|all]   (default all)
# Environment: BENCH_SAMPLES (rule, default 20), BENCH_PORTS (rule, default 10,100,1000),
#              BENCH_RULES (apply, default "100 1000 10000"), BENCH_TPUT_RULES (10000), BENCH_SECONDS (5).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
if [ "$(id -u)" != 0 ]; then
  echo "bench-net.sh needs root (network namespaces, nft)." >&2
  exit 1
fi
apt_install "${BUILD_PACKAGES[@]}" "${RUNTIME_PACKAGES[@]}"
need_cargo
what=${1:-all}
mkdir -p target/bench

prefix_apply="rpb$$-"
prefix_rule="rpl$$-"
# Whatever happens (error, Ctrl-C), delete every namespace this run created: that removes the
# veths, taps, bridges, nft tables and dnsmasq processes inside them too.
cleanup() {
  local n
  for n in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    case "$n" in
      "$prefix_apply"* | "$prefix_rule"*)
        ip netns pids "$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$n" 2>/dev/null || true
        ;;
    esac
  done
  rm -rf "${TMPDIR:-/tmp}/${prefix_apply}run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

run_example() { # JSON-OUT ARGS...
  local out=$1
  shift
  BENCH_NETNS_PREFIX="$prefix_apply" BENCH_OUT="$PWD/$out" \
    cargo run --release --locked -q -p rampart-net --example bench_dataplane -- "$@" >/dev/null
  echo "written: $out" >&2
}

case "$what" in
  apply | all) run_example target/bench/net-apply.json apply ${BENCH_RULES:-100 1000 10000} ;;&
  tput | all) run_example target/bench/net-throughput.json throughput "${BENCH_TPUT_RULES:-10000}" "${BENCH_SECONDS:-5}" ;;&
  rule | all)
    BENCH_NETNS_PREFIX="$prefix_rule" BENCH_OUT="$PWD/target/bench/net-rule-latency.json" \
      cargo bench --locked -p rampart --bench net_rule_latency
    ;;
  apply | tput) ;;
  *)
    echo "usage: scripts/bench-net.sh [rule|apply|tput|all]" >&2
    exit 2
    ;;
esac
