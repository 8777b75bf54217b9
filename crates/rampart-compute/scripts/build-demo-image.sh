#!/bin/bash
# Builds Rampart's demo guest from Debian packages only (apt-get download, nothing else):
#   OUT/vmlinux      the Debian cloud kernel, uncompressed, booted through its PVH entry (microvm)
#   OUT/bzImage      the same kernel as shipped (q35/pc path)
#   OUT/initrd.img   busybox + dropbear initramfs whose /init: loads virtio modules, takes an
#                    address by DHCP when a NIC exists, reads the NoCloud config drive (label
#                    cidata), installs the SSH keys and password hash, starts dropbear, and prints
#                    the boot marker "RAMPART-BOOT-OK" on the serial console.
#   OUT/manifest.txt package versions and SHA-256 of each artefact
# Usage: build-demo-image.sh [OUT]   (default: <crate>/target/demo-image). Idempotent: a finished
# OUT is reused unless REBUILD=1.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/../target/demo-image}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [[ -s $OUT/vmlinux && -s $OUT/initrd.img && -s $OUT/manifest.txt && ${REBUILD:-0} != 1 ]]; then
    echo "demo image already built in $OUT"
    exit 0
fi
for c in apt-get apt-cache dpkg-deb cpio gzip lz4 sha256sum; do
    command -v "$c" >/dev/null || { echo "missing command: $c (apt-get install -y cpio lz4)" >&2; exit 1; }
done

WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

# The kernel package behind the linux-image-cloud-amd64 metapackage.
KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $KPKG ]] || { echo "linux-image-cloud-amd64 not found: run apt-get update" >&2; exit 1; }
PKGS=("$KPKG" busybox-static dropbear-bin libc6 libcrypt1 libtomcrypt1 libtommath1 libgmp10 zlib1g)
mkdir debs root
(cd debs && apt-get download -q "${PKGS[@]}" >/dev/null)
for d in debs/*.deb; do dpkg-deb -x "$d" root; done
KVER=${KPKG#linux-image-}

# --- kernel: the bzImage, and its payload decompressed into an ELF vmlinux with a PVH note
cp "root/boot/vmlinuz-$KVER" bzImage
extract_vmlinux() {
    # Find each LZ4 legacy frame magic (02 21 4c 18) in the bzImage and try to decompress from
    # there, keeping the first result that is an ELF (the kernel tree's extract-vmlinux does this).
    local off
    for off in $(grep -obUaP '\x02\x21\x4c\x18' bzImage | cut -d: -f1); do
        if tail -c +$((off + 1)) bzImage | lz4 -dc 2>/dev/null > vmlinux.try; [[ $(head -c 4 vmlinux.try | od -An -tx1 | tr -d ' ') == 7f454c46 ]]; then
            mv vmlinux.try vmlinux
            return 0
        fi
    done
    return 1
}
extract_vmlinux || { echo "could not extract an ELF vmlinux (LZ4) from $KPKG" >&2; exit 1; }

# --- initramfs
I=initramfs
mkdir -p $I/{bin,sbin,etc,proc,sys,dev,run,tmp,root,home,mnt/cidata,var/log,lib/modules,usr/bin,usr/sbin,lib64,lib/x86_64-linux-gnu,etc/dropbear}
cp root/bin/busybox $I/bin/busybox
for app in $($I/bin/busybox --list); do
    [[ $app == busybox ]] || ln -sf busybox "$I/bin/$app"
done
cp root/usr/sbin/dropbear $I/usr/sbin/dropbear
cp root/lib64/ld-linux-x86-64.so.2 $I/lib64/ 2>/dev/null || cp root/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 $I/lib64/
for lib in libc.so.6 libcrypt.so.1 libtomcrypt.so.1 libtommath.so.1 libgmp.so.10 libz.so.1; do
    src=$(find root/lib root/usr/lib -name "$lib" | head -n1)
    [[ -n $src ]] || { echo "library $lib not found in the packages" >&2; exit 1; }
    cp -L "$src" "$I/lib/x86_64-linux-gnu/$lib"
done
# glibc resolves users through NSS; "files" is built into libc for passwd/shadow/group.
printf 'passwd: files\ngroup: files\nshadow: files\n' > $I/etc/nsswitch.conf
printf '/bin/sh\n' > $I/etc/shells
printf 'root:x:0:0:root:/root:/bin/sh\n' > $I/etc/passwd
printf 'root:*:19000:0:99999:7:::\n' > $I/etc/shadow
printf 'root:x:0:\n' > $I/etc/group
chmod 0600 $I/etc/shadow

# Modules in load order (the cloud kernel builds virtio as modules).
MODDIR=root/lib/modules/$KVER
MODS=(virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_blk cdrom isofs)
: > $I/etc/modules.order
for m in "${MODS[@]}"; do
    f=$(find "$MODDIR" -name "$m.ko*" | head -n1)
    if [[ -z $f ]]; then
        echo "note: module $m is built in or absent in $KVER" >&2
        continue
    fi
    case $f in
        *.xz) xz -dc "$f" > "$I/lib/modules/$m.ko" ;;
        *.zst) zstd -qdc "$f" > "$I/lib/modules/$m.ko" ;;
        *) cp "$f" "$I/lib/modules/$m.ko" ;;
    esac
    echo "$m" >> $I/etc/modules.order
done

cat > $I/etc/udhcpc.script <<'EOF'
#!/bin/sh
# busybox udhcpc hook: apply the lease.
case "$1" in
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
        echo "$ip" > /run/ip
        ;;
esac
exit 0
EOF
chmod 0755 $I/etc/udhcpc.script

cat > $I/init <<'EOF'
#!/bin/sh
# Rampart demo guest init (PID 1).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
log() { echo "$*" > /dev/kmsg; echo "$*" > /dev/console; }
arg() { for a in $(cat /proc/cmdline); do case $a in "$1"=*) echo "${a#*=}";; esac; done; }
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m.ko 2>/dev/null; done
mdev -s 2>/dev/null
# mdev without a config makes every node root 0660; these are world-usable by design.
chmod 0666 /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /dev/ptmx 2>/dev/null
hostname rampart-guest

# Config drive (cloud-init NoCloud, volume label cidata).
META=no INSTANCE=none KEYS=0 DEV=
# Only wait for the drive when the VM has disks at all (virtio-blk probes asynchronously).
if ls /sys/bus/virtio/drivers/virtio_blk/ 2>/dev/null | grep -q virtio; then
    for i in 1 2 3 4 5 6 7 8 9 10; do
        DEV=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null)
        [ -n "$DEV" ] && break
        sleep 0.1; mdev -s 2>/dev/null
    done
fi
if [ -n "$DEV" ] && mount -o ro "$DEV" /mnt/cidata 2>/dev/null; then
    META=yes
    INSTANCE=$(sed -n 's/^instance-id: *//p' /mnt/cidata/meta-data | tr -d '"')
    H=$(sed -n 's/^local-hostname: *//p' /mnt/cidata/meta-data | tr -d '"')
    [ -n "$H" ] && hostname "$H"
    U=$(sed -n 's/^  - name: *//p' /mnt/cidata/user-data | head -n1 | tr -d '"')
    [ -n "$U" ] || U=rampart
    HASH=$(sed -n 's/^    hashed_passwd: *//p' /mnt/cidata/user-data | tr -d '"')
    mkdir -p /home/$U/.ssh
    echo "$U:x:1000:1000:tenant:/home/$U:/bin/sh" >> /etc/passwd
    echo "$U:x:1000:" >> /etc/group
    # The tenant user administers its own VM's disks (cloud images give it sudo instead).
    echo "disk:x:6:$U" >> /etc/group
    for d in /dev/vd*; do chgrp 6 "$d"; chmod 0660 "$d"; done
    echo "$U:${HASH:-!}:19000:0:99999:7:::" >> /etc/shadow
    # Keys are the list items under ssh_authorized_keys (indented six spaces).
    sed -n '/^    ssh_authorized_keys:/,/^    [a-z]/s/^      - *//p' /mnt/cidata/user-data | tr -d '"' > /home/$U/.ssh/authorized_keys
    KEYS=$(grep -c . /home/$U/.ssh/authorized_keys)
    chmod 700 /home/$U/.ssh; chmod 600 /home/$U/.ssh/authorized_keys
    chown -R 1000:1000 /home/$U
    PWAUTH=$(sed -n 's/^ssh_pwauth: *//p' /mnt/cidata/user-data)
fi

# Network: DHCP on the first NIC, if there is one.
IP=none
if [ -e /sys/class/net/eth0 ]; then
    ip link set lo up
    ip link set eth0 up
    udhcpc -i eth0 -s /etc/udhcpc.script -n -q -t 10 -T 1 >/dev/null 2>&1 && IP=$(cat /run/ip)
fi

if [ "$(arg rampart.sshd)" != 0 ] && [ -e /sys/class/net/eth0 ]; then
    if [ "$PWAUTH" = true ]; then dropbear -R -E -p 22 2>/var/log/dropbear.log
    else dropbear -R -E -s -p 22 2>/var/log/dropbear.log; fi
fi

log "RAMPART-BOOT-OK instance-id=$INSTANCE metadata=$META ssh_keys=$KEYS ip=$IP"
if [ "$(arg rampart.poweroff)" = 1 ]; then
    sleep 0.1
    poweroff -f
fi
while true; do sleep 3600; done
EOF
chmod 0755 $I/init

(cd $I && find . -print0 | sort -z | cpio --null -o -H newc --quiet --reproducible) > initrd.cpio
# LZ4 decompresses fastest, which matters under TCG.
lz4 -l -9 -q initrd.cpio initrd.img

cp vmlinux bzImage initrd.img "$OUT/"
{
    echo "kernel_package=$KPKG"
    echo "kernel_version=$KVER"
    for d in debs/*.deb; do echo "deb=$(basename "$d")"; done
    (cd "$OUT" && sha256sum vmlinux bzImage initrd.img)
} > "$OUT/manifest.txt"
echo "demo image built in $OUT:"
ls -l "$OUT"
