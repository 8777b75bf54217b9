#!/usr/bin/env bash
# Benchmarks the HTTPS API with keep-alive connections (wrk): requests/s and p50/p99 latency of
# GET /v1/health (no auth) and of an authenticated GET /v1/nodes, against `rampart up` on the
# embedded default (SQLite). Writes target/bench/api.json and prints a summary.
#   scripts/bench-api.sh [DURATION_S] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
apt_install wrk curl "${BUILD_PACKAGES[@]}"
need_cargo
DURATION=${1:-15}
CONNS=${2:-16}
cargo build --release --locked -p rampart >&2

tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$tmp/rampart.toml" <<CONF
[api]
listen = ["127.0.0.1:$port"]
[log]
level = "warn"
stderr = false
CONF
target/release/rampart up --data-dir "$tmp/data" --config "$tmp/rampart.toml" 2>"$tmp/stderr.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
url="https://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -sf --cacert "$tmp/data/ca.pem" "$url/v1/health" 2>/dev/null | grep -q '"ready":1' && break
  sleep 0.2
done
ca=(--cacert "$tmp/data/ca.pem")
pw=$(cat "$tmp/data/bootstrap-admin-password")
curl -sf "${ca[@]}" -H 'content-type: application/json' "$url/v1/auth/password" \
  -d "{\"username\":\"admin\",\"current_password\":\"$pw\",\"new_password\":\"Bench-passphrase-1\"}"
# RFC 6238 in a few lines, for the admin's second factor.
totp() { python3 - "$1" "$2" <<'PY'
import base64, hashlib, hmac, struct, sys, time
key = base64.b32decode(sys.argv[1] + "=" * (-len(sys.argv[1]) % 8)); step = int(time.time()) // 30 + int(sys.argv[2])
h = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest(); o = h[-1] & 15
print("%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7fffffff) % 1000000))
PY
}
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
login='{"username":"admin","password":"Bench-passphrase-1"'
enrol=$(curl -sf "${ca[@]}" -H 'content-type: application/json' "$url/v1/auth/tokens" -d "$login}" | json '["token"]')
secret=$(curl -sf "${ca[@]}" -X POST -H "Authorization: Bearer $enrol" "$url/v1/auth/mfa/totp" | json '["secret"]')
curl -sf "${ca[@]}" -H "Authorization: Bearer $enrol" -H 'content-type: application/json' \
  "$url/v1/auth/mfa/totp/confirm" -d "{\"code\":\"$(totp "$secret" 0)\"}"
token=$(curl -sf "${ca[@]}" -H 'content-type: application/json' "$url/v1/auth/tokens" \
  -d "$login,\"totp\":\"$(totp "$secret" 1)\"}" | json '["token"]')

run() { # name path [header]
  local name=$1 path=$2; shift 2
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url$path" > "$tmp/$name.txt"
  python3 - "$name" "$tmp/$name.txt" <<'PY'
import json, re, sys
name, path = sys.argv[1], sys.argv[2]
text = open(path).read()
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
lat = {m.group(1): ms(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", text, re.M)}
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(json.dumps({"name": name, "requests_per_s": rps, "p50_ms": lat["50"], "p99_ms": lat["99"],
                  "non_2xx": int(errors.group(1)) if errors else 0}))
PY
}
mkdir -p target/bench
{
  run health /v1/health
  run nodes_authenticated /v1/nodes -H "Authorization: Bearer $token"
} > "$tmp/rows.jsonl"
DURATION=$DURATION CONNS=$CONNS python3 - "$tmp/rows.jsonl" <<'PY'
import json, os, platform, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = {"benchmark": "api", "duration_s": int(os.environ["DURATION"]), "connections": int(os.environ["CONNS"]),
       "cpus": os.cpu_count(), "kernel": platform.release(), "results": rows}
json.dump(out, open("target/bench/api.json", "w"), indent=2)
for r in rows:
    print("%-22s %10.0f req/s   p50 %7.2f ms   p99 %7.2f ms   non-2xx %d"
          % (r["name"], r["requests_per_s"], r["p50_ms"], r["p99_ms"], r["non_2xx"]))
PY
echo "written: target/bench/api.json" >&2
