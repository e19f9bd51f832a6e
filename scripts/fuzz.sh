#!/usr/bin/env bash
# Runs each fuzz target for a bounded time: `scripts/fuzz.sh [SECONDS]`
# (default 60 s each). Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz --locked`). Seeds come from fuzz/seeds/.
#
# By default targets are built in release mode with AddressSanitizer.
# FUZZ_BUILD="--dev -s none" builds faster (CI's brief runs use it).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
read -r -a build <<< "${FUZZ_BUILD:-}"
for target in gossip_record register_exchange json_bodies signed_record; do
  corpus="corpus/$target"
  mkdir -p "$corpus"
  if [ -d "seeds/$target" ]; then cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true; fi
  echo "== fuzz $target for ${secs}s"
  log="$(mktemp)"
  status=0
  cargo +nightly fuzz run "${build[@]}" "$target" "$corpus" -- \
    -max_total_time="$secs" -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1 > "$log" 2>&1 || status=$?
  # libFuzzer is chatty: show its summary, or everything when it failed.
  if [ "$status" = 0 ]; then
    grep -E "^Done|stat::number_of_executed_units" "$log" || true
  else
    tail -n 60 "$log"
    echo "fuzz target $target failed (exit $status); the crashing input is under fuzz/artifacts/$target" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
done
