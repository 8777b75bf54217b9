#!/bin/bash
# Installs what the compute tests and the demo image need on a Debian 12 host (root):
# QEMU (system emulator matching the installed qemu-utils), genisoimage for config drives,
# cpio/lz4 for the initramfs, busybox for the test DHCP server, OpenSSH client for the login
# test, util-linux (setpriv, unshare, nsenter). Idempotent.
#
# The CI machine kind ships qemu-utils 10.0 from bookworm-backports, and Debian 12's
# qemu-system-x86 7.2 "Breaks" it, so the system emulator then comes from bookworm-backports
# too, through a private source list that leaves /etc/apt untouched.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q -o DPkg::Lock::Timeout=600 --no-install-recommends)
PKGS=(genisoimage cpio lz4 busybox-static openssh-client util-linux iproute2 dropbear-bin)

if ! command -v qemu-system-x86_64 >/dev/null; then
    utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [[ $utils == *bpo12* ]]; then
        d=$(mktemp -d)
        trap 'rm -rf "$d"' EXIT
        mkdir -p "$d/lists/partial"
        echo "deb http://deb.debian.org/debian bookworm-backports main" > "$d/backports.list"
        o=(-o "Dir::Etc::sourcelist=$d/backports.list" -o "Dir::State::Lists=$d/lists")
        apt-get -q "${o[@]}" update
        apt-get install "${APT_OPTS[@]}" "${o[@]}" -t bookworm-backports qemu-system-x86
    else
        apt-get install "${APT_OPTS[@]}" qemu-system-x86 qemu-utils
    fi
fi
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
    apt-get install "${APT_OPTS[@]}" "${missing[@]}" || { apt-get update -q && apt-get install "${APT_OPTS[@]}" "${missing[@]}"; }
fi
qemu-system-x86_64 --version | head -n1
