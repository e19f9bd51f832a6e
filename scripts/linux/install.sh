#!/usr/bin/env bash
# Installs aios-cell as a systemd service (scripts/linux/aios-cell.service).
#
#   sudo scripts/linux/install.sh [BINARY]      # install or upgrade, enable, start
#   sudo scripts/linux/install.sh --no-start [BINARY]
#   sudo scripts/linux/install.sh --uninstall [--purge]
#
# BINARY defaults to target/release/aios-cell (cargo build --release).
# Installs /usr/local/bin/aios-cell, /etc/systemd/system/aios-cell.service,
# /etc/aios-cell/aios-cell.env (an example, only if absent) and
# /etc/aios-cell/aios-cell.toml.example. The cell's state is in
# /var/lib/aios-cell, kept by --uninstall unless --purge is given.
#
# DESTDIR=/some/dir installs under that root instead and skips systemctl and
# the root check (for packaging, and for tests/artefacts.rs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
destdir="${DESTDIR:-}"
bin_path="$destdir/usr/local/bin/aios-cell"
unit_path="$destdir/etc/systemd/system/aios-cell.service"
etc_dir="$destdir/etc/aios-cell"

start=1
uninstall=0
purge=0
binary=""
for arg in "$@"; do
  case "$arg" in
    --no-start) start=0 ;;
    --uninstall) uninstall=1 ;;
    --purge) purge=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
    *) binary="$arg" ;;
  esac
done

die() { echo "install.sh: $*" >&2; exit 1; }

# systemctl only on the real system root.
sysctl() {
  if [ -z "$destdir" ]; then
    systemctl "$@"
  fi
}

if [ -z "$destdir" ]; then
  [ "$(id -u)" = 0 ] || die "run as root (sudo), or set DESTDIR"
  command -v systemctl >/dev/null 2>&1 || die "systemctl not found: this script is for systemd systems"
fi

if [ "$uninstall" = 1 ]; then
  if [ -z "$destdir" ] && systemctl list-unit-files aios-cell.service >/dev/null 2>&1; then
    systemctl disable --now aios-cell.service || true
  fi
  rm -f "$unit_path" "$bin_path"
  sysctl daemon-reload
  if [ "$purge" = 1 ]; then
    # DynamicUser keeps the state under /var/lib/private.
    rm -rf "$etc_dir" "$destdir/var/lib/private/aios-cell" "$destdir/var/lib/aios-cell"
    echo "removed aios-cell, its configuration and its state (identity key)"
  else
    echo "removed aios-cell; kept $etc_dir and /var/lib/aios-cell (--purge removes them)"
  fi
  exit 0
fi

if [ -z "$binary" ]; then
  binary="$repo/target/release/aios-cell"
  [ -x "$binary" ] || die "no $binary: build it with 'cargo build --release', or pass the binary's path"
fi
if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then
  die "$binary is not an executable file"
fi
# Refuse a binary that does not run here (wrong architecture, missing libc).
version="$("$binary" --version)" || die "$binary does not run on this machine"

install -d -m 0755 "$(dirname "$bin_path")" "$(dirname "$unit_path")" "$etc_dir"
# Replace atomically: a running cell keeps its open (old) file.
install -m 0755 "$binary" "$bin_path.new"
mv -f "$bin_path.new" "$bin_path"
install -m 0644 "$here/aios-cell.service" "$unit_path"
install -m 0644 "$repo/config/aios-cell.toml" "$etc_dir/aios-cell.toml.example"

env_file="$etc_dir/aios-cell.env"
if [ ! -e "$env_file" ]; then
  # 0600: it may come to hold AIOS_API_TOKEN.
  install -m 0600 /dev/null "$env_file"
  cat >"$env_file" <<'ENV'
# aios-cell settings for the systemd unit: AIOS_* variables, one per line.
# `systemctl restart aios-cell` after editing. Every variable is described in
# /etc/aios-cell/aios-cell.toml.example (the same keys in lower case).
#AIOS_CELL_ID=desktop
#AIOS_NETWORK_PEERS=aios-laptop.local:8001
#AIOS_API_TOKEN=change-me
#AIOS_CONFIG=/etc/aios-cell/aios-cell.toml
ENV
fi
echo "installed $version to $bin_path"

if [ -n "$destdir" ]; then
  echo "DESTDIR set: not touching systemd"
  exit 0
fi

systemctl daemon-reload
if [ "$start" = 1 ]; then
  systemctl enable aios-cell.service
  # restart, not start: an upgrade must run the new binary.
  systemctl restart aios-cell.service
  for _ in $(seq 1 20); do
    if "$bin_path" health --api http://127.0.0.1:8000 >/dev/null 2>&1; then
      "$bin_path" health --api http://127.0.0.1:8000
      exit 0
    fi
    sleep 1
  done
  echo "install.sh: the cell did not answer on http://127.0.0.1:8000/health within 20 s" >&2
  echo "  (fine if AIOS_HTTP_ADDR moves it; else see: journalctl -u aios-cell -e)" >&2
  systemctl --no-pager status aios-cell.service >&2 || true
  exit 1
else
  systemctl enable aios-cell.service
  echo "enabled; start it with: systemctl start aios-cell"
fi
