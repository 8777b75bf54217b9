#!/usr/bin/env bash
# Sets up what is missing on a Debian 12 machine and starts Rampart on the embedded default:
# the controller with SQLite and its own CA, plus a local agent. Extra arguments go to
# `rampart up` (e.g. --config FILE). The data directory is $RAMPART_DATA_DIR, by default
# /var/lib/rampart as root and ~/.local/share/rampart otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
apt_install "${BUILD_PACKAGES[@]}" "${RUNTIME_PACKAGES[@]}"
need_cargo
cargo build --release --locked -p rampart
exec target/release/rampart up "$@"
