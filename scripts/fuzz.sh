#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 60 s each; CI passes a
# few seconds). Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz --locked`). Seeds come from fuzz/seeds/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
for target in gossip_record register_exchange json_bodies; do
  corpus="corpus/$target"
  mkdir -p "$corpus"
  if [ -d "seeds/$target" ]; then cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true; fi
  echo "== fuzz $target for ${secs}s"
  cargo +nightly fuzz run "$target" "$corpus" -- -max_total_time="$secs" -max_len=8192 -rss_limit_mb=2048
done
