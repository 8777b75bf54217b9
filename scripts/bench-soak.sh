#!/usr/bin/env bash
# Soak test (issue 13): mixed load against `rampart up` on the embedded default (SQLite) for
# MINUTES minutes, with WORKERS keep-alive clients doing, in turn, GET /v1/health, GET
# /v1/projects, a project write (POST /v1/projects, or DELETE of the worker's oldest project once it
# holds LIVE of them, so the number of projects reaches a steady state as in a running cloud;
# both are audited writes that also create or destroy HSM objects) and GET /v1/nodes. Every minute it records
# requests/s, p99 latency, errors, the controller's RSS and the database size; at the end the
# least-squares slope of req/s and RSS per minute says whether they stay flat. Writes
# target/bench/soak.json. WRITES=updates makes the write a PATCH of one project per worker
# instead (no HSM object made or destroyed), to tell the controller's memory from SoftHSM2's.
#   [LIVE=25] [WRITES=projects|updates] scripts/bench-soak.sh [MINUTES] [WORKERS]
#   (RAMPART_BIN=path to use a built binary)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
MINUTES=${1:-30}
WORKERS=${2:-8}
BIN=${RAMPART_BIN:-}
if [ -z "$BIN" ]; then
  apt_install curl "${BUILD_PACKAGES[@]}"
  need_cargo
  cargo build --release --locked -p rampart >&2
  BIN=target/release/rampart
fi

tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$tmp/rampart.toml" <<CONF
[api]
listen = ["127.0.0.1:$port"]
[log]
level = "warn"
stderr = false
CONF
"$BIN" up --data-dir "$tmp/data" --config "$tmp/rampart.toml" 2>"$tmp/stderr.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
mkdir -p target/bench
MINUTES=$MINUTES WORKERS=$WORKERS PORT=$port DATA="$tmp/data" PID=$pid python3 - <<'PY'
import base64, hashlib, hmac, http.client, json, os, ssl, struct, threading, time

port, data, pid = int(os.environ["PORT"]), os.environ["DATA"], int(os.environ["PID"])
minutes, workers = int(os.environ["MINUTES"]), int(os.environ["WORKERS"])
ctx = ssl.create_default_context(cafile=None)
for _ in range(300):
    if os.path.exists(f"{data}/ca.pem") and os.path.exists(f"{data}/bootstrap-admin-password"):
        break
    time.sleep(0.2)
time.sleep(1)
ctx = ssl.create_default_context(cafile=f"{data}/ca.pem")

def call(conn, method, path, body=None, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    r = conn.getresponse()
    return r.status, r.read()

def connect():
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)

def totp(secret, ahead):
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    step = int(time.time()) // 30 + ahead
    h = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    o = h[-1] & 15
    return "%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1000000)

c = connect()
for _ in range(300):
    try:
        if call(c, "GET", "/v1/health")[0] == 200:
            break
    except Exception:
        c = connect()
    time.sleep(0.2)
pw = open(f"{data}/bootstrap-admin-password").read().strip()
new = "Soak-passphrase-41"
call(c, "POST", "/v1/auth/password", {"username": "admin", "current_password": pw, "new_password": new})
enrol = json.loads(call(c, "POST", "/v1/auth/tokens", {"username": "admin", "password": new})[1])["token"]
secret = json.loads(call(c, "POST", "/v1/auth/mfa/totp", None, enrol)[1])["secret"]
call(c, "POST", "/v1/auth/mfa/totp/confirm", {"code": totp(secret, 0)}, enrol)
token = json.loads(call(c, "POST", "/v1/auth/tokens", {"username": "admin", "password": new, "totp": totp(secret, 1)})[1])["token"]

lock = threading.Lock()
KINDS = ["health", "list_projects", "create_project", "list_nodes"]
window = {"n": 0, "errors": 0, "lat": [], "by_kind": {k: [] for k in KINDS}}
stop = time.time() + minutes * 60

LIVE = int(os.environ.get("LIVE", "25"))
# WRITES=updates: the write is a PATCH of one project per worker, an audited write that makes
# no HSM object; it separates the controller's own memory from the HSM library's.
WRITES = os.environ.get("WRITES", "projects")

def worker(w):
    conn, i, live = connect(), 0, []
    while time.time() < stop:
        kind = i % 4
        t0 = time.perf_counter()
        try:
            if kind == 0:
                s, _ = call(conn, "GET", "/v1/health")
            elif kind == 1:
                s, _ = call(conn, "GET", "/v1/projects?limit=20", None, token)
            elif kind == 2 and WRITES == "updates":
                if not live:
                    s, b = call(conn, "POST", "/v1/projects", {"name": f"soak-{w}"}, token)
                    live.append(json.loads(b)["id"])
                s, _ = call(conn, "PATCH", f"/v1/projects/{live[0]}", {"description": f"soak {i}"}, token)
            elif kind == 2 and len(live) >= LIVE:
                s, _ = call(conn, "DELETE", f"/v1/projects/{live[0]}", None, token)
                if s < 400:
                    live.pop(0)
            elif kind == 2:
                s, b = call(conn, "POST", "/v1/projects", {"name": f"soak-{w}-{i}"}, token)
                if s < 400:
                    live.append(json.loads(b)["id"])
            else:
                s, _ = call(conn, "GET", "/v1/nodes", None, token)
            ok = s < 400
        except Exception:
            ok, conn = False, connect()
        dt = time.perf_counter() - t0
        with lock:
            window["n"] += 1
            window["errors"] += 0 if ok else 1
            window["lat"].append(dt)
            window["by_kind"][KINDS[kind]].append(dt)
        i += 1

threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers)]
for t in threads:
    t.start()

def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

def db_mib():
    return sum(os.path.getsize(f"{data}/{f}") for f in os.listdir(data) if f.startswith("rampart.db")) / 2**20

rows = []
for minute in range(1, minutes + 1):
    time.sleep(max(0, stop - (minutes - minute) * 60 - time.time()))
    with lock:
        n, errors, lat = window["n"], window["errors"], sorted(window["lat"])
        by_kind = window["by_kind"]
        window.update(n=0, errors=0, lat=[], by_kind={k: [] for k in KINDS})
    row = {"minute": minute, "requests_per_s": round(n / 60, 1), "errors": errors,
           "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 1) if lat else None,
           "rss_mib": round(rss_mib(), 1), "db_mib": round(db_mib(), 1),
           "load_1m": os.getloadavg()[0],
           # Mean latency per request kind: which call slows down as the tables grow.
           "mean_ms": {k: round(sum(v) / len(v) * 1000, 1) if v else None for k, v in by_kind.items()}}
    rows.append(row)
    print(json.dumps(row), flush=True)

def slope(ys):
    xs = list(range(1, len(ys) + 1))
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs) or 1
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den

# The first minute warms up (caches, first writes): slopes are over the rest.
steady = rows[1:] if len(rows) > 2 else rows
out = {"benchmark": "soak", "minutes": minutes, "workers": workers, "cpus": os.cpu_count(), "per_minute": rows,
       "requests_per_s_slope_per_min": round(slope([r["requests_per_s"] for r in steady]), 2),
       "rss_mib_slope_per_min": round(slope([r["rss_mib"] for r in steady]), 3),
       "live_projects_per_worker": LIVE, "writes": WRITES}
# The common benchmark shape (API.md, Benchmarks), beside the per-minute detail above.
out["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
out["load_avg"] = os.getloadavg()[0]
out["rows"] = [
    {"metric": "soak_requests_per_s_slope", "value": out["requests_per_s_slope_per_min"], "unit": "req/s per min", "goal": "~0"},
    {"metric": "soak_rss_slope", "value": out["rss_mib_slope_per_min"], "unit": "MiB per min", "goal": "~0"},
    {"metric": "soak_errors", "value": sum(r["errors"] for r in rows), "unit": "requests", "goal": 0},
]
json.dump(out, open("target/bench/soak.json", "w"), indent=2)
print(f"req/s slope {out['requests_per_s_slope_per_min']}/min, RSS slope {out['rss_mib_slope_per_min']} MiB/min")
PY
