#!/usr/bin/env bash
# Runs every test of the project: the Rust suites (unit, router, in-process
# mesh, and the LAN test in network namespaces when run as root), then the
# VS Code extension's tests against a real cell when npm is present.
# Set AIOS_REQUIRE_NETNS=1 / AIOS_REQUIRE_TOOLS=1 to make skipped parts fail.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --locked --all-targets

if [ -f vscode-extension/package.json ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "== VS Code extension"
    (
      cd vscode-extension
      [ -d node_modules ] || npm ci --no-audit --no-fund
      npm test
    )
  elif [ "${AIOS_REQUIRE_TOOLS:-0}" = 1 ]; then
    echo "npm is required for the extension's tests" >&2
    exit 1
  else
    echo "== VS Code extension: skipped (npm not found)"
  fi
fi
echo "== all tests passed"
