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
# Put the CLI on the PATH when we may (the other verbs — login, user, project... — use it).
if [ -w /usr/local/bin ]; then install -m 0755 target/release/rampart /usr/local/bin/rampart; fi
exec target/release/rampart up "$@"
