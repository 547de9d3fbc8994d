#!/usr/bin/env bash
# Instructions per Validate, counted by callgrind (repeatable where wall time is not): authd with
# tracing off and on but sampled out, and the floor (examples/validate_floor.rs, and on authd's
# allocator validate_floor_mimalloc.rs), each under valgrind, counting only while the load runs.
#
#   scripts/validate_callgrind.sh [seconds]
#
# BENCH_BIN_DIR names a folder of prebuilt binaries (authd, load, validate_floor,
# validate_floor_mimalloc) to measure.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
  bin=$BENCH_BIN_DIR authd=$bin/authd load_bin=$bin/load floor_bin=$bin/validate_floor
  floor_mimalloc_bin=$bin/validate_floor_mimalloc
else
  cargo build --release --quiet --bin authd --example load --example validate_floor \
    --example validate_floor_mimalloc
  authd=target/release/authd load_bin=target/release/examples/load
  floor_bin=target/release/examples/validate_floor
  floor_mimalloc_bin=target/release/examples/validate_floor_mimalloc
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

export AUTH_LISTEN=127.0.0.1:50073 AUTH_HTTP_LISTEN=127.0.0.1:8093 RUST_LOG=warn
export AUTH_DATABASE_URL="sqlite://$work/authd.db?mode=rwc" AUTH_ACCESS_TOKEN_TTL=2h
export AUTH_SIGNING_KEY_FILE=$work/signing_key.pem AUTH_REFRESH_KEY_FILE=$work/refresh_key.pem
export AUTH_ARGON2_MEMORY_KIB=64 AUTH_ARGON2_ITERATIONS=1 AUTH_LOGIN_FREE_ATTEMPTS=1000
$authd keys generate --out "$AUTH_SIGNING_KEY_FILE" >/dev/null
$authd keys generate --out "$AUTH_REFRESH_KEY_FILE" >/dev/null
for n in $(seq 0 15); do
  echo "correct horse battery staple" | $authd user add "fast+$n@example.com" --password-stdin >/dev/null
done
ready() { until "$load_bin" --target "http://$1" --mode health --duration 100ms --in-flight 1 \
  --connections 1 >/dev/null 2>&1; do sleep 0.5; done; }
$authd serve 2>"$work/setup.log" &
server=$!
ready "$AUTH_LISTEN"
"$load_bin" --target "http://$AUTH_LISTEN" --mode sessions --sessions 500 --accounts 16 \
  --email fast@example.com --tokens-file "$work/tokens" >/dev/null
kill "$server"; wait "$server" || true

measure() { # label, address, [VAR=value...] binary args...: VAR=value pairs set its environment
  local label=$1 address=$2; shift 2
  local environment=()
  while [[ $1 == *=* ]]; do environment+=("$1"); shift; done
  env "${environment[@]}" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/out.%p" "$@" 2>>"$work/valgrind.log" &
  local pid=$!
  ready "$address"
  # Warm the connections and the caches uncounted (every token verified once), then count
  # while the load runs, and then as long again idle: background work (timers, the revocation
  # poll) runs by the clock, and under valgrind a call takes fifty times as long.
  "$load_bin" --target "http://$address" --mode validate --tokens-file "$work/tokens" \
    --duration 4s --connections 4 --in-flight 64 >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  local calls
  calls=$("$load_bin" --target "http://$address" --mode validate --tokens-file "$work/tokens" \
    --duration "${seconds}s" --connections 4 --in-flight 64 | awk '$1 == "Validate" {print $2}')
  # A dump holds what was counted since the last (switching instrumentation off first would
  # discard it).
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep "$seconds"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local instructions
  instructions=$(( $(awk '/^summary:/ {print $2}' "$work"/out.*.1) - $(awk '/^summary:/ {print $2}' "$work"/out.*.2) ))
  [[ -n ${CALLGRIND_KEEP:-} ]] && cp "$work"/out.*.1 "$CALLGRIND_KEEP/${label//[^a-z]/_}.callgrind"
  rm -f "$work"/out.*
  echo "$label: $calls calls, $(awk "BEGIN {printf \"%.0f\", $instructions / $calls}") instructions per call"
}

echo "# instructions per Validate under callgrind, $(date -u +%F), commit $(git rev-parse --short HEAD)"
measure "floor" 127.0.0.1:50074 "$floor_bin" 127.0.0.1:50074
measure "floor on mimalloc" 127.0.0.1:50074 "$floor_mimalloc_bin" 127.0.0.1:50074
measure "authd, tracing off" "$AUTH_LISTEN" "$authd" serve
measure "authd, tracing sampled out" "$AUTH_LISTEN" OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 \
  OTEL_TRACES_SAMPLER=parentbased_always_off "$authd" serve
