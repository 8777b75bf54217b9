#!/usr/bin/env bash
# Posture benchmarks (release): vulnerability matching of 2 000 installed packages against a
# synthetic Debian Security Tracker file of realistic size (~40 000 CVE × package entries, three
# releases each; goal: import + match < 1 s), and a hardening check of this host (facts from /,
# evaluation). Writes target/bench/posture.json ({"date","load_avg","rows":[…]}).
#   scripts/bench-posture.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
cargo bench --locked -p rampart-posture --bench posture
