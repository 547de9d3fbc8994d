#!/usr/bin/env bash
# Soak test: a mixed load (80% Validate, 15% Refresh, 5% Login) against a release build of
# authd on PostgreSQL for a set time, sampling the server's resident memory every 10 seconds.
# Not part of CI. Usage: scripts/soak.sh [DURATION] (default 10m), e.g. scripts/soak.sh 2m
#
# Environment: SOAK_PG (default postgres://postgres@127.0.0.1:5432), SOAK_IN_FLIGHT (64),
# SOAK_CONNECTIONS (4).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-10m}
pg=${SOAK_PG:-postgres://postgres@127.0.0.1:5432}
in_flight=${SOAK_IN_FLIGHT:-64}
connections=${SOAK_CONNECTIONS:-4}
work=$(mktemp -d)
db="authd_soak_$$"
port=$((20000 + RANDOM % 20000))

cargo build --release --quiet --bin authd --example load
psql "$pg/postgres" -qc "CREATE DATABASE $db"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$work"
}
trap cleanup EXIT

openssl genpkey -algorithm ed25519 -out "$work/key.pem" 2>/dev/null
chmod 600 "$work/key.pem"
export AUTH_DATABASE_URL="$pg/$db" AUTH_SIGNING_KEY_FILE="$work/key.pem" \
  AUTH_LISTEN="127.0.0.1:$port" AUTH_DB_MAX_CONNECTIONS=16 RUST_LOG=warn
# authd serialises one account's logins: the workers log in as 64 accounts (load --accounts).
for n in $(seq 0 63); do
  echo 'correct horse battery staple' | target/release/authd user add "load+$n@example.com" --password-stdin >/dev/null
done
${SOAK_SERVER_PREFIX:-}target/release/authd serve 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status"; }
echo "idle RSS: $(rss_kib) KiB"
(
  start=$(date +%s)
  while kill -0 "$server_pid" 2>/dev/null; do
    echo "$(( $(date +%s) - start )) $(rss_kib)"
    sleep "${SOAK_SAMPLE_EVERY:-10}"
  done
) >"$work/rss.txt" &
sampler=$!

target/release/examples/load --target "http://127.0.0.1:$port" --mode "${SOAK_MODE:-mixed}" --accounts 64 \
  --duration "$duration" --in-flight "$in_flight" --connections "$connections" | tee "$work/load.txt"
kill "$sampler" 2>/dev/null || true

echo
echo "resident memory (seconds since start, KiB):"
awk -v every="$(( 60 / ${SOAK_SAMPLE_EVERY:-10} ))" 'NR == 1 || NR % every == 0 {printf "  %6ss %8s KiB\n", $1, $2} END {printf "  last    %8s KiB (max %s KiB)\n", $2, max} {if ($2 > max) max = $2}' "$work/rss.txt"
echo "server errors logged: $(grep -c -E 'ERROR|WARN' "$work/server.log" || true)"
