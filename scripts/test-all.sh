#!/usr/bin/env bash
# Runs every test of the project: the Rust suites (unit, router, in-process
# mesh, load, deployment artefacts, and the LAN tests in network namespaces
# when run as root), then the Windows cell under Wine against a Linux cell
# (tests/wine/run.sh) when Wine, mingw-w64 and the Rust target are present,
# then the VS Code extension's tests against a real cell when the extension
# and npm are present. Ends with one "N passed, M failed"
# line. Set AIOS_REQUIRE_NETNS=1 / AIOS_REQUIRE_TOOLS=1 to make skipped parts
# fail.
set -euo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

echo "== cargo test"
cargo test --locked --all-targets 2>&1 | tee "$log"

# Skips itself, saying why, when Wine or the Windows target is missing
# (fails instead with AIOS_REQUIRE_TOOLS=1).
bash tests/wine/run.sh 2>&1 | tee -a "$log"

if [ -f vscode-extension/package.json ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "== VS Code extension"
    (
      cd vscode-extension
      [ -d node_modules ] || npm ci --no-audit --no-fund
      npm test
    ) 2>&1 | tee -a "$log"
  elif [ "${AIOS_REQUIRE_TOOLS:-0}" = 1 ]; then
    echo "npm is required for the extension's tests" >&2
    exit 1
  else
    echo "== VS Code extension: skipped (npm not found)"
  fi
fi

# Totals over cargo's "test result:" lines (and the "# pass"/"# fail" of
# node and tests/wine/run.sh).
passed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($i ~ /^passed;?$/) s += $(i-1)} /^# pass / {s += $3} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($i ~ /^failed;?$/) s += $(i-1)} /^# fail / {s += $3} END {print s + 0}' "$log")
echo "== all tests passed"
echo "$passed passed, $failed failed"
