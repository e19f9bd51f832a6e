#!/usr/bin/env bash
# The Windows cell under Wine against a Linux cell, on loopback, mDNS off.
#
# Builds aios-cell.exe (x86_64-pc-windows-gnu) and the Linux binary, starts
# the .exe under Wine in a fresh WINEPREFIX with the default transports (TCP
# and QUIC asked for; Wine 8 cannot start the QUIC listener, so the cell must
# run on TCP and say so), its data dir left to the default (%APPDATA%), and a
# Linux cell that names it in AIOS_NETWORK_PEERS. Then checks:
#   - /health of both, and which transports listen;
#   - each lists the other alive;
#   - a level set on either reaches the other;
#   - `aios-cell.exe health` / `peers`, run under Wine, against both cells;
#   - Ctrl-C (SIGINT, which Wine turns into a console CTRL_C_EVENT) makes
#     the Windows cell leave: the Linux cell shows it `left`;
#   - restarted on the same data dir (under %APPDATA% in the prefix), it
#     keeps its peer id and is alive again on the Linux cell.
# Every wait is bounded; everything started is stopped and the prefix
# deleted on exit, also on failure. Prints TAP-style "ok"/"not ok" lines
# and "# pass N" / "# fail N" (which scripts/test-all.sh counts).
#
# Needs wine (Debian: wine64 and wine), mingw-w64 (gcc-mingw-w64-x86-64),
# rustup's x86_64-pc-windows-gnu target and python3. When one is missing the
# test is skipped with the reason, or fails with AIOS_REQUIRE_TOOLS=1 (CI).
# AIOS_TEST_LOGS=1 prints the cells' logs even when it passes.
set -euo pipefail
cd "$(dirname "$0")/../.."

WIN_TARGET=x86_64-pc-windows-gnu
target_dir="${CARGO_TARGET_DIR:-target}"
begun=$(date +%s)

unavailable() {
  if [ "${AIOS_REQUIRE_TOOLS:-0}" = 1 ]; then
    echo "the Windows cell test cannot run: $1" >&2
    exit 1
  fi
  echo "== Windows cell under Wine: skipped ($1)"
  exit 0
}
command -v wine >/dev/null 2>&1 || unavailable "wine not found (Debian: apt-get install wine64 wine)"
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 ||
  unavailable "x86_64-w64-mingw32-gcc not found (Debian: apt-get install gcc-mingw-w64-x86-64)"
command -v python3 >/dev/null 2>&1 || unavailable "python3 not found"
if ! rustup target list --installed 2>/dev/null | grep -qx "$WIN_TARGET"; then
  unavailable "the Rust target $WIN_TARGET is not installed (rustup target add $WIN_TARGET)"
fi

echo "== Windows cell under Wine"
t0=$(date +%s)
cargo build --locked --quiet --bin aios-cell
exe=$(bash scripts/windows/build-gnu.sh | tail -n 1)
echo "built both binaries in $(( $(date +%s) - t0 )) s"
linux_bin="$target_dir/debug/aios-cell"

work="$(mktemp -d "${TMPDIR:-/tmp}/aios-wine.XXXXXX")"
export WINEPREFIX="$work/prefix" WINEDEBUG=-all WINEARCH=win64
# No Mono or Gecko install prompts in the fresh prefix; no X display needed.
export WINEDLLOVERRIDES="mscoree,mshtml="
unset DISPLAY WAYLAND_DISPLAY
# Nothing from the caller's environment configures the cells.
for v in $(env | sed -n 's/^\(AIOS_[A-Z0-9_]*\)=.*/\1/p'); do unset "$v"; done

pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # Ends the Wine processes of this prefix only (wineserver and the
  # services it started), then the prefix goes.
  if [ -d "$WINEPREFIX" ]; then
    timeout 30 wineserver -k >/dev/null 2>&1 || true
    timeout 30 wineserver -w >/dev/null 2>&1 || true
  fi
  if [ "$rc" != 0 ] || [ "${AIOS_TEST_LOGS:-0}" = 1 ]; then
    for log in "$work"/*.log; do
      [ -f "$log" ] || continue
      echo "---- $(basename "$log")"
      tail -n 80 "$log"
    done
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The .exe and, beside it, the Wine-only stand-in for bcryptprimitives.dll.
mkdir -p "$work/bin"
cp "$exe" "$work/bin/aios-cell.exe"
x86_64-w64-mingw32-gcc -shared -O2 -o "$work/bin/bcryptprimitives.dll" \
  tests/wine/bcryptprimitives.c -ladvapi32

t0=$(date +%s)
timeout 180 wine wineboot --init >"$work/wineboot.log" 2>&1 ||
  { echo "wineboot failed or timed out (see its log)" >&2; exit 1; }
timeout 60 wineserver -w || true
echo "made a fresh Wine prefix in $(( $(date +%s) - t0 )) s ($(wine --version 2>/dev/null))"

# Eight free loopback ports: HTTP, metrics, libp2p for each cell (libp2p's
# TCP and UDP both free), and one more each for the beats (libp2p + 1).
read -r w_http w_metrics w_p2p l_http l_metrics l_p2p < <(python3 - <<'EOF'
import socket
def free(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    return s
held, out = [], []
while len(out) < 6:
    t = free(socket.SOCK_STREAM); held.append(t)
    port = t.getsockname()[1]
    if len(out) in (2, 5):  # libp2p: UDP too, and the beat port after it
        try:
            for p in (port, port + 1):
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind(("127.0.0.1", p)); held.append(u)
        except OSError:
            continue
    out.append(port)
print(*out)
EOF
)

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok $((passed + failed)) - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok $((passed + failed)) - $1"; }

# json FILE EXPR: evaluates the Python expression EXPR with `j` the JSON in FILE.
json() { python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# lin VERB... / win VERB...: a client verb of the Linux binary or, under
# Wine, of the .exe, against the API of `cell` (win or lin); JSON to stdout.
api_of() { if [ "$1" = win ]; then echo "http://127.0.0.1:$w_http"; else echo "http://127.0.0.1:$l_http"; fi; }
lin() { local cell=$1; shift; timeout 20 "$linux_bin" "$@" --api "$(api_of "$cell")" --json; }
win() { local cell=$1; shift; timeout 60 wine "$work/bin/aios-cell.exe" "$@" --api "$(api_of "$cell")" --json; }

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it
# succeeds; false after SECONDS.
wait_until() {
  local within=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + within ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "# timed out after ${within} s waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

win_pid=""
start_win() {
  AIOS_CELL_ID=wincell AIOS_MDNS=false AIOS_P2P_IP=127.0.0.1 AIOS_P2P_PORT="$w_p2p" \
    AIOS_HTTP_ADDR="127.0.0.1:$w_http" AIOS_METRICS_ADDR="127.0.0.1:$w_metrics" \
    RUST_LOG=info wine "$work/bin/aios-cell.exe" run >>"$work/windows-cell.log" 2>&1 &
  win_pid=$!
  pids+=("$win_pid")
}

# peers_state CELL PEER_ID STATE: CELL's /peers lists PEER_ID in STATE.
peers_state() {
  lin "$1" peers >"$work/q.json" && [ "$(json "$work/q.json" \
    "next((p['state'] for p in j['peers'] if p['peer_id'] == '$2'), '')")" = "$3" ]
}
# level_of CELL PEER_ID LEVEL: CELL's /peers shows PEER_ID at LEVEL.
level_is() {
  lin "$1" peers >"$work/q.json" && [ "$(json "$work/q.json" \
    "next((p['consciousness_level'] for p in j['peers'] if p['peer_id'] == '$2'), None) == $3")" = True ]
}
health_of() { lin "$1" health >"$work/h-$1.json"; }
transports_known() { health_of win && [ "$(json "$work/h-win.json" "len(j['transports'])")" != 0 ]; }

# --- start both cells ---------------------------------------------------------
t_start=$(date +%s)
start_win
if wait_until 60 "the Windows cell's API" health_of win; then
  ok "the Windows cell starts under Wine with default transports and answers /health"
else
  not_ok "the Windows cell starts under Wine with default transports and answers /health"
  exit 1
fi
echo "# Windows cell up in $(( $(date +%s) - t_start )) s"
# The listeners report their addresses just after the API is up.
wait_until 10 "the Windows cell's listen addresses" transports_known || true
win_id=$(json "$work/h-win.json" "j['peer_id']")
win_transports=$(json "$work/h-win.json" "','.join(j['transports'])")
echo "# Windows cell $win_id listens on: $win_transports"
case ",$win_transports," in
  *,tcp,*) ok "the Windows cell listens on TCP ($win_transports)" ;;
  *) not_ok "the Windows cell listens on TCP ($win_transports)" ;;
esac
if [ "${win_transports#*quic}" = "$win_transports" ]; then
  # QUIC did not start: the warning says so with a reason after the colon.
  if grep -Eq 'QUIC is off, running on TCP only: cannot listen on [^ ]+/quic-v1: .*[^ ]' \
    "$work/windows-cell.log"; then
    ok "QUIC could not listen under Wine: the cell warned why and runs on TCP"
    grep -o 'QUIC is off.*' "$work/windows-cell.log" | head -n 1 | sed 's/^/# /'
  else
    not_ok "QUIC is missing from transports but the log has no warning with a reason"
  fi
fi

AIOS_CELL_ID=lincell AIOS_MDNS=false AIOS_P2P_IP=127.0.0.1 AIOS_P2P_PORT="$l_p2p" \
  AIOS_HTTP_ADDR="127.0.0.1:$l_http" AIOS_METRICS_ADDR="127.0.0.1:$l_metrics" \
  AIOS_DATA_DIR="$work/linux-data" AIOS_NETWORK_PEERS="127.0.0.1:$w_p2p" \
  XDG_CONFIG_HOME="$work/linux-config" RUST_LOG=info \
  "$linux_bin" run >"$work/linux-cell.log" 2>&1 &
lin_pid=$!
pids+=("$lin_pid")
if wait_until 30 "the Linux cell's API" health_of lin; then
  ok "the Linux cell answers /health"
else
  not_ok "the Linux cell answers /health"
  exit 1
fi
lin_id=$(json "$work/h-lin.json" "j['peer_id']")

# --- each lists the other alive ---------------------------------------------------
t0=$(date +%s)
if wait_until 30 "the Linux cell to list the Windows cell alive" peers_state lin "$win_id" alive &&
  wait_until 30 "the Windows cell to list the Linux cell alive" peers_state win "$lin_id" alive; then
  ok "each cell lists the other alive ($(( $(date +%s) - t0 )) s)"
else
  not_ok "each cell lists the other alive"
  exit 1
fi

# --- levels travel both ways -----------------------------------------------------
if lin win sync --level 3.25 >/dev/null && wait_until 15 "3.25 on the Linux cell" level_is lin "$win_id" 3.25; then
  ok "a level set on the Windows cell reaches the Linux cell"
else
  not_ok "a level set on the Windows cell reaches the Linux cell"
fi
if lin lin sync --level 1.75 >/dev/null && wait_until 15 "1.75 on the Windows cell" level_is win "$lin_id" 1.75; then
  ok "a level set on the Linux cell reaches the Windows cell"
else
  not_ok "a level set on the Linux cell reaches the Windows cell"
fi

# --- the .exe's client verbs, under Wine, against both cells --------------------------
for cell in win lin; do
  other=$([ "$cell" = win ] && echo "$lin_id" || echo "$win_id")
  me=$([ "$cell" = win ] && echo "$win_id" || echo "$lin_id")
  if win "$cell" health >"$work/wh.json" 2>"$work/wine-client.log" &&
    [ "$(json "$work/wh.json" "j['peer_id']")" = "$me" ]; then
    ok "aios-cell.exe health against the $cell cell"
  else
    not_ok "aios-cell.exe health against the $cell cell"
  fi
  if win "$cell" peers >"$work/wp.json" 2>>"$work/wine-client.log" &&
    [ "$(json "$work/wp.json" "[p['state'] for p in j['peers'] if p['peer_id'] == '$other']")" = "['alive']" ]; then
    ok "aios-cell.exe peers against the $cell cell lists the other alive"
  else
    not_ok "aios-cell.exe peers against the $cell cell lists the other alive"
  fi
done
# The table form too (what a user types first).
if win win peers >/dev/null 2>&1 && timeout 60 wine "$work/bin/aios-cell.exe" peers --api "$(api_of win)" |
  grep -q lincell; then
  ok "aios-cell.exe peers prints the table"
else
  not_ok "aios-cell.exe peers prints the table"
fi

# --- Ctrl-C: the Windows cell leaves -----------------------------------------------
t0=$(date +%s)
kill -INT "$win_pid"
win_exit=""
for _ in $(seq 1 150); do
  if ! kill -0 "$win_pid" 2>/dev/null; then
    set +e; wait "$win_pid"; win_exit=$?; set -e
    break
  fi
  sleep 0.1
done
if [ -z "$win_exit" ]; then
  not_ok "Ctrl-C (SIGINT → CTRL_C_EVENT) stops the Windows cell within 15 s"
  exit 1
fi
if [ "$win_exit" = 0 ] && grep -q "cell stopped" "$work/windows-cell.log"; then
  ok "Ctrl-C stops the Windows cell cleanly (exit 0, $(( $(date +%s) - t0 )) s)"
else
  not_ok "Ctrl-C stops the Windows cell cleanly (exit $win_exit)"
fi
if wait_until 10 "the Linux cell to show the Windows cell left" peers_state lin "$win_id" left; then
  ok "the Linux cell shows the Windows cell left"
else
  not_ok "the Linux cell shows the Windows cell left (it says: $(json "$work/q.json" \
    "[p['state'] for p in j['peers'] if p['peer_id'] == '$win_id']"))"
fi

# --- restart on the same data dir, under %APPDATA% --------------------------------
key=$(find "$WINEPREFIX/drive_c/users" -path '*/AppData/Roaming/aios/aios-cell/data/identity.key' | head -n 1)
if [ -n "$key" ]; then
  ok "the data dir resolves under %APPDATA% (${key#"$WINEPREFIX"/})"
else
  not_ok "the data dir resolves under %APPDATA% (no identity.key there)"
fi
start_win
if wait_until 60 "the restarted Windows cell's API" health_of win &&
  [ "$(json "$work/h-win.json" "j['peer_id']")" = "$win_id" ]; then
  ok "restarted on the same data dir, the Windows cell keeps its peer id"
else
  not_ok "restarted on the same data dir, the Windows cell keeps its peer id"
fi
if wait_until 30 "the Linux cell to list the restarted Windows cell alive" peers_state lin "$win_id" alive; then
  ok "the restarted Windows cell is alive again on the Linux cell"
else
  not_ok "the restarted Windows cell is alive again on the Linux cell"
fi

echo "# Wine test took $(( $(date +%s) - begun )) s in all"
echo "# pass $passed"
echo "# fail $failed"
[ "$failed" = 0 ]
