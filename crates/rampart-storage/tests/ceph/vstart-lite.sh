#!/usr/bin/env bash
# A vstart-like single-node Ceph (mon a, mgr x, osd.0 and osd.1 on BlueStore files, cephx on),
# all on 127.0.0.1; prints the seconds until `ceph osd stat` shows 2 OSDs up and in. The daemons
# keep running: stop them with the PIDs in $D/run/*.pid. Measurement tool for docs/storage.md;
# the Ceph backend's tests will start their cluster the same way.
set -euo pipefail
D=${1:?dir}
mkdir -p "$D"/{run,log,mon,mgr,osd}
FSID=$(cat /proc/sys/kernel/random/uuid)
PORT=${CEPH_PORT:-46789}
t0=$(date +%s.%N)
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
bluestore block size = 1073741824
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mkfs = false
osd max object name len = 460
osd max object namespace len = 64
mon allow pool delete = true
mon allow pool size one = true
mon warn on pool no redundancy = false
mgr initial modules =
CONF
C="-c $D/ceph.conf"
ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$D/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
monmaptool --create --addv a "[v2:127.0.0.1:$PORT]" --fsid "$FSID" "$D/monmap" >/dev/null
mkdir -p "$D/mon/ceph-a"
ceph-mon $C --mkfs -i a --monmap "$D/monmap" --keyring "$D/keyring"
ceph-mon $C -i a --pid-file "$D/run/mon.a.pid"
timeout 60 ceph $C -s >/dev/null
mkdir -p "$D/mgr/ceph-x"
ceph $C auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$D/mgr/ceph-x/keyring"
ceph-mgr $C -i x --pid-file "$D/run/mgr.x.pid"
for i in 0 1; do
  U=$(cat /proc/sys/kernel/random/uuid)
  S=$(ceph-authtool --gen-print-key)
  echo "{\"cephx_secret\": \"$S\"}" > "$D/osd$i.json"
  ceph $C osd new "$U" -i "$D/osd$i.json" >/dev/null
  rm -f "$D/osd$i.json"
  mkdir -p "$D/osd/ceph-$i"
  ceph-authtool --create-keyring "$D/osd/ceph-$i/keyring" --name "osd.$i" --add-key "$S" >/dev/null
  ceph-osd $C -i "$i" --mkfs --osd-uuid "$U" 2>>"$D/log/mkfs.log"
  ceph-osd $C -i "$i" --pid-file "$D/run/osd.$i.pid"
done
for _ in $(seq 1 240); do
  if ceph $C osd stat 2>/dev/null | grep -q "2 osds: 2 up.*2 in"; then
    t1=$(date +%s.%N)
    echo "cluster up in $(awk "BEGIN{print $t1 - $t0}") s"
    ceph $C -s
    exit 0
  fi
  sleep 0.5
done
echo "not up after 120 s" >&2
ceph $C -s >&2 || true
exit 1
