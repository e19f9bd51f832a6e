#!/usr/bin/env bash
# Cross-builds aios-cell.exe for Windows (x86_64-pc-windows-gnu) on Linux,
# as CI does. Needs rustup's target and the mingw-w64 toolchain:
#   rustup target add x86_64-pc-windows-gnu
#   apt-get install gcc-mingw-w64-x86-64        # Debian/Ubuntu; links, builds aws-lc
# Usage: scripts/windows/build-gnu.sh [--release]
# Prints the path of the .exe last. Honours CARGO_TARGET_DIR. See
# scripts/windows/README.md for the MSVC build on Windows itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=x86_64-pc-windows-gnu
profile=debug
args=(--locked --target "$target" --bin aios-cell)
case "${1:-}" in
  --release) profile=release; args+=(--release) ;;
  "") ;;
  *) echo "usage: $0 [--release]" >&2; exit 2 ;;
esac
if ! rustup target list --installed | grep -qx "$target"; then
  echo "the Rust target $target is missing: rustup target add $target" >&2
  exit 1
fi
if ! command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
  echo "x86_64-w64-mingw32-gcc is missing: apt-get install gcc-mingw-w64-x86-64" >&2
  exit 1
fi
# The debug build (CI's, for the test under Wine) without debug info: with
# it the .exe is ~530 MB and linking it dominates the build.
if [ "$profile" = debug ]; then
  export CARGO_PROFILE_DEV_DEBUG=0
fi
cargo build "${args[@]}"
echo "${CARGO_TARGET_DIR:-target}/$target/$profile/aios-cell.exe"
