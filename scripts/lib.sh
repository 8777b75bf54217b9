# Shared by the scripts: install Debian packages only when missing, and find cargo.
# shellcheck shell=bash

# apt_install PKG...: installs the packages that are not installed yet.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}" >&2
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; then
    "${sudo[@]}" apt-get update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
  fi
}

# need_cargo: checks for a Rust toolchain recent enough for the workspace (edition 2024, 1.95).
need_cargo() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "Rust is not installed. Install it with rustup (https://rustup.rs):" >&2
    echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y" >&2
    exit 1
  fi
  local v
  v=$(rustc --version | awk '{print $2}')
  if [ "$(printf '%s\n1.95.0\n' "$v" | sort -V | head -1)" != "1.95.0" ]; then
    echo "Rust $v is too old: Rampart needs 1.95 or newer (rustup update stable)." >&2
    exit 1
  fi
}

# Packages the build needs (ring and the bundled SQLite compile C).
BUILD_PACKAGES=(gcc libc6-dev pkg-config ca-certificates)
# Packages Rampart uses at run time on a node.
# (softhsm2: the embedded HSM of `rampart up`)
RUNTIME_PACKAGES=(iproute2 openssl softhsm2)
# Tenant networking on a node (rampart-net): nft, conntrack, platform DHCP.
RUNTIME_PACKAGES+=(nftables conntrack dnsmasq-base)
# The README walk-through: curl for the API, jq to pick ids out of its answers.
RUNTIME_PACKAGES+=(curl jq)
# Volume backups (rampart-backup): restic drives the repositories; sftp targets go over ssh.
RUNTIME_PACKAGES+=(restic openssh-client)
# Packages the test suite needs besides those.
# (softhsm2 for the key tests, sqlite3 for the database-dump scan of rampart-kms)
TEST_PACKAGES=(postgresql openssl iproute2 curl softhsm2 sqlite3)
# The audit trail's forwarding tests run a private RFC 5425 receiver (issue 4).
TEST_PACKAGES+=(rsyslog rsyslog-gnutls)
# The second backup target of the backup tests: an sshd (sftp) in a throwaway namespace.
TEST_PACKAGES+=(openssh-server)
# What a node needs to run VMs and build the demo guest (qemu-system-x86, genisoimage, cpio,
# lz4, busybox-static, openssh-client, util-linux, dropbear-bin): the list lives in
# crates/rampart-compute/scripts/install-host-deps.sh, which takes QEMU from bookworm-backports
# when the machine's qemu-utils already comes from there (Debian 12's qemu-system-x86 breaks it).

install_compute_packages() {
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" bash crates/rampart-compute/scripts/install-host-deps.sh >&2
}
# Network data-plane tests: "VMs" in namespaces ping, lease (udhcpc), arping (busybox).
TEST_PACKAGES+=(busybox-static iputils-ping python3)
# Volumes (rampart-storage): the btrfs RAID1 pool test (btrfs is in this kernel; the tools are
# not installed by default). QEMU's LUKS driver and qemu-img come with the compute packages.
TEST_PACKAGES+=(btrfs-progs)
# The Ceph backend: a single-node cluster for the tests (scripts/ci/start-ceph.sh) and the
# client side a node needs (rbd, rados, ceph CLIs; rbd-fuse, since this QEMU has no rbd driver).
TEST_PACKAGES+=(ceph-mon ceph-osd ceph-mgr ceph-common rbd-fuse)
