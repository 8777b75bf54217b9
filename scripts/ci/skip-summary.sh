#!/usr/bin/env bash
# Prints one line counting the skipped tests of a skip log (lines `reason<TAB>test`, written by
# rampart_common::testing::skip), by reason, most frequent first:
#   skipped tests: 3 (not root: 2; softhsm2 missing: 1)
set -euo pipefail
log=${1:?usage: skip-summary.sh SKIP_LOG}
if [ ! -s "$log" ]; then
  echo "skipped tests: 0"
  exit 0
fi
LC_ALL=C awk -F'\t' '
  NF && $0 !~ /^[[:space:]]*$/ { total++; n[$1]++ }
  END {
    # Most frequent first, then by reason (a plain selection sort: a handful of reasons).
    out = ""; k = 0
    for (r in n) { keys[++k] = r }
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++)
      if (n[keys[j]] > n[keys[i]] || (n[keys[j]] == n[keys[i]] && keys[j] < keys[i])) { t = keys[i]; keys[i] = keys[j]; keys[j] = t }
    for (i = 1; i <= k; i++) out = out (i > 1 ? "; " : "") keys[i] ": " n[keys[i]]
    printf "skipped tests: %d (%s)\n", total, out
  }' "$log"
