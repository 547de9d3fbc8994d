#!/usr/bin/env bash
# Failed-login timing by kind of account (BENCHMARKS.md, "Equal timing"): an unknown email and
# wrong passwords on accounts hashed with cheaper, the current and costlier argon2 parameters,
# interleaved, against a release build on the SQLite default.
#
#   scripts/login_timing.sh [rounds]      (AUTHD=path/to/authd to time another build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-40}
[[ -n ${AUTHD:-} ]] || cargo build --release --quiet --bin authd --example login_timing
authd=${AUTHD:-target/release/authd}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
export AUTH_LISTEN=127.0.0.1:50072 AUTH_HTTP_LISTEN=127.0.0.1:8092 RUST_LOG=warn
export AUTH_DATABASE_URL="sqlite://$work/authd.db?mode=rwc"
export AUTH_SIGNING_KEY_FILE=$work/signing_key.pem AUTH_REFRESH_KEY_FILE=$work/refresh_key.pem
export AUTH_LOGIN_FREE_ATTEMPTS=1000 AUTH_LOGIN_ADDRESS_FREE_ATTEMPTS=100000
$authd keys generate --out "$AUTH_SIGNING_KEY_FILE" >/dev/null
$authd keys generate --out "$AUTH_REFRESH_KEY_FILE" >/dev/null
add() { # email memory_kib iterations
  echo "a long enough passphrase for the timing" |
    AUTH_ARGON2_MEMORY_KIB=$2 AUTH_ARGON2_ITERATIONS=$3 $authd user add "$1" --password-stdin >/dev/null
}
add cheaper@example.com 9216 1
add current@example.com 19456 2
add costlier@example.com 47104 2
# The server runs the OWASP defaults (19 MiB, 2 passes).
$authd serve 2>>"$work/authd.log" &
until target/release/examples/login_timing --target "http://$AUTH_LISTEN" --rounds 0 >/dev/null 2>&1; do sleep 0.2; done
echo "# failed logins by kind, $rounds rounds interleaved, $(nproc) cores, commit $(git rev-parse --short HEAD), $($authd --version 2>/dev/null || echo authd)"
target/release/examples/login_timing --target "http://$AUTH_LISTEN" --rounds "$rounds" \
  --account cheaper=cheaper@example.com --account current=current@example.com \
  --account costlier=costlier@example.com
