#!/usr/bin/env bash
# Starts a throwaway single-node Ceph for the test suite (the layout of Ceph's own vstart.sh,
# without ceph-volume, which needs LVM): mon `a`, mgr `x`, `osd.0` and `osd.1` with
# BlueStore on sparse files, cephx on, everything on 127.0.0.1, replicated pools of size 2 by
# default. Tests make their own pools (unique names) with the admin key and remove them.
# Prints the environment the tests read. Idempotent: a healthy running cluster is reused.
# `start-ceph.sh stop` stops the daemons and removes $CEPHROOT.
set -euo pipefail
CEPHROOT=${CEPHROOT:-/tmp/rampart-ci-ceph}
PORT=${CEPH_PORT:-46789}
D=$CEPHROOT
C=(-c "$D/ceph.conf" --connect-timeout 10)

stop() {
  for p in "$D"/run/*.pid; do
    [ -f "$p" ] || continue
    kill "$(cat "$p")" 2>/dev/null || true
  done
  # Give the daemons a moment to flush, then force.
  for _ in $(seq 1 50); do
    alive=0
    for p in "$D"/run/*.pid; do [ -f "$p" ] && kill -0 "$(cat "$p")" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "$D"/run/*.pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null || true; done
}

if [ "${1:-}" = stop ]; then
  [ -d "$D" ] && stop
  rm -rf "$D"
  exit 0
fi

emit() {
  echo "export RAMPART_TEST_CEPH_CONF='$D/ceph.conf'"
  echo "export RAMPART_TEST_CEPH_KEYRING='$D/keyring'"
}

up() { timeout 15 ceph "${C[@]}" osd stat 2>/dev/null | grep -q "2 osds: 2 up.*2 in"; }

if [ -f "$D/ceph.conf" ] && up; then
  emit
  exit 0
fi

for b in ceph-mon ceph-osd ceph-mgr rbd rados rbd-fuse; do
  if ! command -v "$b" >/dev/null; then
    echo "start-ceph: installing ceph" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q ceph-mon ceph-osd ceph-mgr ceph-common rbd-fuse >&2
    break
  fi
done

[ -d "$D" ] && stop
rm -rf "$D"
mkdir -p "$D"/{run,log,mon,mgr,osd}
chmod 0700 "$D"
t0=$(date +%s.%N)
FSID=$(cat /proc/sys/kernel/random/uuid)
cat > "$D/ceph.conf" <<CONF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$PORT
public network = 127.0.0.0/8
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 2
osd pool default min size = 1
osd crush chooseleaf type = 0
run dir = $D/run
admin socket = $D/run/\$name.asok
log file = $D/log/\$name.log
mon data = $D/mon/\$cluster-\$id
osd data = $D/osd/\$cluster-\$id
mgr data = $D/mgr/\$cluster-\$id
keyring = $D/\$type/\$cluster-\$id/keyring,$D/keyring
ms bind ipv4 = true
ms bind ipv6 = false
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 2147483648
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mkfs = false
osd max object name len = 460
osd max object namespace len = 64
mon allow pool delete = true
mon warn on pool no redundancy = false
auth allow insecure global id reclaim = false
mon data avail warn = 1
mon max pg per osd = 1000
osd pool default pg autoscale mode = off
mgr initial modules =
CONF
ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$D/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
  --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
chmod 0600 "$D/keyring"
monmaptool --create --addv a "[v2:127.0.0.1:$PORT]" --fsid "$FSID" "$D/monmap" >/dev/null
mkdir -p "$D/mon/ceph-a"
ceph-mon -c "$D/ceph.conf" --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring"
ceph-mon -c "$D/ceph.conf" -i a --pid-file "$D/run/mon.a.pid" 2>>"$D/log/start.log"
timeout 60 ceph "${C[@]}" -s >/dev/null
mkdir -p "$D/mgr/ceph-x"
ceph "${C[@]}" auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
  -o "$D/mgr/ceph-x/keyring"
ceph-mgr -c "$D/ceph.conf" -i x --pid-file "$D/run/mgr.x.pid" 2>>"$D/log/start.log"
for i in 0 1; do
  U=$(cat /proc/sys/kernel/random/uuid)
  S=$(ceph-authtool --gen-print-key)
  (umask 077; echo "{\"cephx_secret\": \"$S\"}" > "$D/osd$i.json")
  ceph "${C[@]}" osd new "$U" -i "$D/osd$i.json" >/dev/null
  rm -f "$D/osd$i.json"
  mkdir -p "$D/osd/ceph-$i"
  ceph-authtool --create-keyring "$D/osd/ceph-$i/keyring" --name "osd.$i" --add-key "$S" >/dev/null
  ceph-osd -c "$D/ceph.conf" -i "$i" --mkfs --osd-uuid "$U" 2>>"$D/log/mkfs.log"
  ceph-osd -c "$D/ceph.conf" -i "$i" --pid-file "$D/run/osd.$i.pid" 2>>"$D/log/start.log"
done
for _ in $(seq 1 240); do
  if up; then
    t1=$(date +%s.%N)
    echo "start-ceph: cluster up in $(awk "BEGIN{print $t1 - $t0}") s" >&2
    emit
    exit 0
  fi
  sleep 0.5
done
echo "start-ceph: not up after 120 s" >&2
ceph "${C[@]}" -s >&2 || true
exit 1
