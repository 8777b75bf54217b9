#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the test suite: its own cluster under $PGROOT (default
# /tmp/rampart-ci-postgres), listening on 127.0.0.1:$PGPORT (default 54329) only, with TLS from
# a CA made here, so tests can check `sslmode=verify-full`. Prints the environment the tests read.
# Idempotent: a running cluster is reused.
set -euo pipefail
PGROOT=${PGROOT:-/tmp/rampart-ci-postgres}
PGPORT=${PGPORT:-54329}
PGPASS_FILE=$PGROOT/password

find_bin() {
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/$1" ] && { echo "$d/$1"; return; }; done
  command -v "$1" || true
}
INITDB=$(find_bin initdb); PG_CTL=$(find_bin pg_ctl)
if [ -z "$INITDB" ] || [ -z "$PG_CTL" ]; then
  echo "start-postgres: installing postgresql" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
  INITDB=$(find_bin initdb); PG_CTL=$(find_bin pg_ctl)
fi
RUN_AS=()
if [ "$(id -u)" = 0 ]; then RUN_AS=(runuser -u postgres --); fi

mkdir -p "$PGROOT"
if [ ! -f "$PGROOT/data/PG_VERSION" ]; then
  head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$PGPASS_FILE"
  chmod 0600 "$PGPASS_FILE"
  [ "$(id -u)" = 0 ] && chown -R postgres "$PGROOT"
  "${RUN_AS[@]}" "$INITDB" -D "$PGROOT/data" -U postgres --auth=scram-sha-256 --pwfile="$PGPASS_FILE" -E UTF8 >/dev/null
  # TLS material: a CA and a server certificate for 127.0.0.1 and localhost.
  tls=$PGROOT/tls; mkdir -p "$tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=rampart-ci-postgres-ca" -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$tls/ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 30 -extfile "$tls/ext" -out "$tls/server.pem" 2>/dev/null
  chmod 0600 "$tls/server.key" "$tls/ca.key"
  [ "$(id -u)" = 0 ] && chown -R postgres "$PGROOT"
  chmod 0755 "$PGROOT" "$tls"; chmod 0644 "$tls/ca.pem"
  cat >> "$PGROOT/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGROOT'
ssl = on
ssl_cert_file = '$tls/server.pem'
ssl_key_file = '$tls/server.key'
ssl_min_protocol_version = 'TLSv1.2'
max_connections = 300
fsync = off
CONF
  printf 'local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n' \
    > "$PGROOT/data/pg_hba.conf"
fi
if ! "${RUN_AS[@]}" "$PG_CTL" -D "$PGROOT/data" status >/dev/null 2>&1; then
  "${RUN_AS[@]}" "$PG_CTL" -D "$PGROOT/data" -l "$PGROOT/log" -w -t 60 start >/dev/null
fi
PASS=$(cat "$PGPASS_FILE")
echo "export RAMPART_TEST_POSTGRES_URL='postgres://postgres:$PASS@127.0.0.1:$PGPORT/postgres'"
echo "export RAMPART_TEST_POSTGRES_CA='$PGROOT/tls/ca.pem'"
