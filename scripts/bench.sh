#!/usr/bin/env bash
# End-to-end benchmarks against a release build (BENCHMARKS.md explains every figure).
#
#   scripts/bench.sh sqlite|postgres [phase...]
#
# Phases (all by default): transport (health, validate, refresh), login (login, validate p99
# with and without a login flood, memory), cleanup (refresh p99 while 1,000,000 ended
# sessions are deleted), pgbench (postgres only: authd's Refresh statement, refresh.sql, and
# the single-row conditional UPDATE floor, update.sql, at the same concurrency), busycore
# (validate p99 alone and beside a CPU loop at SCHED_IDLE outside authd, to compare with the
# login phase's flood; needs the transport phase's tokens), floor (Validate against a plain tonic
# server answering a fixed ValidateResponse, examples/validate_floor.rs, and against the health
# check, with server CPU per call, authd with tracing off and on but sampled out, and the same
# floor on authd's allocator, examples/validate_floor_mimalloc.rs: each pair loaded at the same
# moment; it then says whether each of issue 16's targets holds, and a missed one makes the
# script exit 1 once every phase has run), ab (not by default: two builds of authd, this one
# and the one in BENCH_AB_DIR, loaded side by side as the floor phase does, each as the
# other's reference).
# BENCH_RUNS (3) runs of BENCH_DURATION (10s) each; the load generator runs beside the server.
# BENCH_BIN_DIR names a folder of prebuilt binaries to measure instead of building.
# BENCH_PIN=1 runs the servers on CPU 0 and the load generator on CPU 1 (taskset), so that
# neither takes the other's core: steadier figures on a two-core host.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?usage: scripts/bench.sh sqlite|postgres [phase...]}
shift
phases=${*:-transport floor login busycore cleanup pgbench}
runs=${BENCH_RUNS:-3}
duration=${BENCH_DURATION:-10s}
in_flight=${BENCH_IN_FLIGHT:-64}
# The floor phase's client (examples/load.rs --client): raw spends less per call than a server.
client=${BENCH_CLIENT:-raw}
connections=${BENCH_CONNECTIONS:-4}
# The floor and ab phases' Validate rotates through this many of the 10,000 sessions' tokens.
floor_tokens=${BENCH_TOKENS:-10000}

# BENCH_BIN_DIR: binaries built before (authd, load, validate_floor, validate_floor_mimalloc,
# otlp_sink), for A/B runs of two builds.
if [[ -n ${BENCH_BIN_DIR:-} ]]; then
  bin=$BENCH_BIN_DIR authd=$bin/authd load_bin=$bin/load floor_bin=$bin/validate_floor
  floor_mimalloc_bin=$bin/validate_floor_mimalloc sink_bin=$bin/otlp_sink
else
  cargo build --release --quiet --bin authd --example load --example validate_floor \
    --example validate_floor_mimalloc --example otlp_sink
  authd=target/release/authd load_bin=target/release/examples/load
  floor_bin=target/release/examples/validate_floor sink_bin=target/release/examples/otlp_sink
  floor_mimalloc_bin=target/release/examples/validate_floor_mimalloc
fi
load() { "$load_bin" --target "http://$AUTH_LISTEN" --accounts "$accounts" "$@"; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

export AUTH_LISTEN=127.0.0.1:50071 AUTH_HTTP_LISTEN=127.0.0.1:8091 RUST_LOG=warn
export AUTH_ACCESS_TOKEN_TTL=2h AUTH_SIGNING_KEY_FILE=$work/signing_key.pem
export AUTH_REFRESH_KEY_FILE=$work/refresh_key.pem
# Benchmark users log in again and again; throttling must not be what is measured.
export AUTH_LOGIN_FREE_ATTEMPTS=1000 AUTH_LOGIN_ADDRESS_FREE_ATTEMPTS=100000
$authd keys generate --out "$AUTH_SIGNING_KEY_FILE" >/dev/null
$authd keys generate --out "$AUTH_REFRESH_KEY_FILE" >/dev/null
case $backend in
  sqlite) export AUTH_DATABASE_URL="sqlite://$work/authd.db?mode=rwc" ;;
  postgres)
    db=authd_bench_$$
    psql -qh 127.0.0.1 -U postgres -c "CREATE DATABASE $db" >/dev/null
    trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"; psql -qh 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT
    export AUTH_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" ;;
  *) echo "backend must be sqlite or postgres" >&2; exit 2 ;;
esac
cheap_argon2=(AUTH_ARGON2_MEMORY_KIB=64 AUTH_ARGON2_ITERATIONS=1)

add_user() { # email [env...]
  local email=$1; shift
  echo "correct horse battery staple" | env "$@" $authd user add "$email" --password-stdin >/dev/null
}
# authd serialises the logins of one account: the workers log in as $accounts accounts,
# local+N@domain (the load generator's --accounts), so that logins run side by side.
accounts=64
add_users() { # email [env...]
  local email=$1; shift
  for n in $(seq 0 $((accounts - 1))); do add_user "${email%@*}+$n@${email#*@}" "$@"; done
}
start() { # [env...]
  "${on_server_cpu[@]}" env "$@" $authd serve 2>>"$work/authd.log" &
  server=$!
  until load --mode health --duration 100ms --in-flight 1 --connections 1 >/dev/null 2>&1; do sleep 0.2; done
}
stop() { kill "$server"; wait "$server" || true; }
if [[ -n ${BENCH_PIN:-} ]]; then
  on_server_cpu=(taskset -c 0) on_client_cpu=(taskset -c 1)
else
  on_server_cpu=() on_client_cpu=()
fi
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# User plus system CPU of a process so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)
# The floor phase's load: `mode` on `address`, for `duration`, by the raw client.
floor_load() { # address, mode, duration
  "${on_client_cpu[@]}" "$load_bin" --target "http://$1" --mode "$2" --client "$client" \
    --tokens-file "$work/floor_tokens" --duration "$3" --connections "$connections" --in-flight "$in_flight"
}
# Two servers loaded at the same moment, each by its own client (taking turns on the same
# cores when pinned): both see the same moments of this shared host, whose speed swings from
# one second to the next, so their ratio holds where measurements taken in turn drift apart.
# Prints each one's load report and its server CPU per call.
side_by_side() { # round, then "label pid address mode" for the reference and for the subject
  local round=$1 reference subject before after beside
  read -r -a reference <<<"$2"
  read -r -a subject <<<"$3"
  # Steady state: every token verified once (and cached) before the count starts, as in a
  # server that has been up for a while; connections warm on both servers alike.
  floor_load "${reference[2]}" "${reference[3]}" 2s >/dev/null &
  beside=$!
  floor_load "${subject[2]}" "${subject[3]}" 2s >/dev/null
  wait "$beside"
  before=("$(cpu_ticks "${reference[1]}")" "$(cpu_ticks "${subject[1]}")")
  floor_load "${reference[2]}" "${reference[3]}" "$duration" >"$work/reference" &
  beside=$!
  floor_load "${subject[2]}" "${subject[3]}" "$duration" >"$work/subject"
  wait "$beside"
  after=("$(cpu_ticks "${reference[1]}")" "$(cpu_ticks "${subject[1]}")")
  local i=0 role label
  for role in reference subject; do
    if [[ $role == reference ]]; then label=${reference[0]}; else label=${subject[0]}; fi
    echo "## ${subject[0]} beside ${reference[0]}, round $round, $role $label"
    tail -n +2 "$work/$role"
    awk -v ticks=$((after[i] - before[i])) -v hz="$ticks_per_second" \
      '$1 == "Validate" || $1 == "Health" {printf "server CPU per call: %.2f µs\n", ticks * 1e6 / hz / $2}' \
      "$work/$role"
    i=$((i + 1))
  done
}
run() { # label, load arguments...
  local label=$1; shift
  echo "## $label"
  load --duration "$duration" --connections "$connections" --in-flight "$in_flight" "$@" | tail -n +2
}

# The floor and ab phases' tokens: 10,000 sessions opened on a first server, then stopped;
# BENCH_TOKENS of them in rotation.
prepare_tokens() {
  if [[ ! -f $work/tokens ]]; then
    add_users fast@example.com "${cheap_argon2[@]}"
    start "${cheap_argon2[@]}"
    load --mode sessions --sessions 10000 --email fast@example.com --tokens-file "$work/tokens" \
      --in-flight "$in_flight" --connections "$connections"
    stop
  fi
  head -n "$floor_tokens" "$work/tokens" >"$work/floor_tokens"
}
# Every server of the floor and ab phases runs from the start (on SQLite each on its own copy
# of the database); each round then loads every pair side by side: the subject and the
# reference it is judged against, at the same moments of this shared host. The targets are
# judged on the median of the per-round ratios.
serve_floor() { "${on_server_cpu[@]}" "${2:-$floor_bin}" "$1" & } # address [binary]
serve_authd() { # port offset, env...; $authd_bin, if set, is the binary to serve
  local offset=$1 database=() file; shift
  if [[ $backend == sqlite ]]; then # PostgreSQL: one database serves them all
    for file in "$work"/authd.db*; do cp "$file" "$work/floor_$offset${file#"$work"/authd}"; done
    database=(AUTH_DATABASE_URL="sqlite://$work/floor_$offset.db?mode=rwc")
  fi
  "${on_server_cpu[@]}" env AUTH_LISTEN="127.0.0.1:$((50080 + offset))" \
    AUTH_HTTP_LISTEN="127.0.0.1:$((8180 + offset))" "${database[@]}" "$@" \
    "${authd_bin:-$authd}" serve 2>>"$work/authd.log" &
}
wait_for() { # addresses...
  local address
  for address in "$@"; do
    until "$load_bin" --target "http://$address" --mode health --duration 100ms \
      --in-flight 1 --connections 1 >/dev/null 2>&1; do sleep 0.2; done
  done
}
# $runs rounds of every pair in $pairs ("reference subject", names in $servers), then each
# pair's per-round ratios and their medians.
pairs_side_by_side() {
  local i pair reference subject
  : >"$work/floor.log"
  for i in $(seq "$runs"); do
    for pair in "${pairs[@]}"; do
      read -r reference subject <<<"$pair"
      side_by_side "$i" "${servers[$reference]}" "${servers[$subject]}" | tee -a "$work/floor.log"
    done
  done
  echo "## per round: the subject's throughput and server CPU per call against its reference's"
  awk -v runs="$runs" -v pairs="${pairs[*]}" '
    /^## / { key = $2 " " $4; sub(/,$/, "", key); round = $6; sub(/,$/, "", round); role = $7 }
    $1 == "Validate" || $1 == "Health" { rate[key, round, role] = $3 }
    /^server CPU per call/ { cpu[key, round, role] = $5 }
    function median(values, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
        if (values[j] < values[i]) { t = values[i]; values[i] = values[j]; values[j] = t }
      return n % 2 ? values[(n + 1) / 2] : (values[n / 2] + values[n / 2 + 1]) / 2
    }
    END {
      count = split(pairs, names, " ")
      for (k = 1; k < count; k += 2) {
        key = names[k + 1] " " names[k]; line = ""
        for (r = 1; r <= runs; r++) {
          t[r] = rate[key, r, "subject"] / rate[key, r, "reference"]
          c[r] = cpu[key, r, "subject"] / cpu[key, r, "reference"]
          line = line sprintf(" %.2f/%.2f", t[r], c[r])
        }
        printf "%s against %s, throughput/CPU per round:%s\n", names[k + 1], names[k], line
        printf "%s against %s, medians: throughput %.2f, server CPU per call %.2f\n",
          names[k + 1], names[k], median(t, runs), median(c, runs)
      }
    }' "$work/floor.log"
}
# Issue 16's targets for Validate, judged on the floor phase's medians: subject, reference,
# the least throughput ratio and the most server CPU per call ratio ("-": none).
floor_targets=("off floor 0.95 1.1" "sampled_out floor 0.95 1.1" "off health 0.9 -"
  "sampled_out health 0.9 -")
missed=0
judge() { # the medians printed by pairs_side_by_side, then targets as in floor_targets
  local medians=$1 target subject reference least most line throughput cpu bounds; shift
  for target in "$@"; do
    read -r subject reference least most <<<"$target"
    bounds="throughput at least $least"
    [[ $most == - ]] || bounds+=", CPU at most $most"
    line=$(grep "^$subject against $reference, medians:" "$medians" || true)
    if [[ -z $line ]]; then
      echo "TARGET NOT MEASURED: $subject against $reference"
      missed=1
      continue
    fi
    throughput=$(sed -E 's/.*throughput ([0-9.]+),.*/\1/' <<<"$line")
    cpu=$(sed -E 's/.*per call ([0-9.]+)$/\1/' <<<"$line")
    if awk -v t="$throughput" -v c="$cpu" -v l="$least" -v m="$most" \
      'BEGIN { exit !(t >= l && (m == "-" || c <= m)) }'; then
      echo "target holds: $subject against $reference: throughput $throughput, CPU $cpu ($bounds)"
    else
      echo "TARGET MISSED: $subject against $reference: throughput $throughput, CPU $cpu ($bounds)"
      missed=1
    fi
  done
}
echo "# authd end-to-end benchmarks: $backend, $(nproc) cores, $(date -u +%F), commit $(git rev-parse --short HEAD)"
for phase in $phases; do
  case $phase in
  transport)
    add_users fast@example.com "${cheap_argon2[@]}"
    start "${cheap_argon2[@]}"
    echo "idle RSS after start: $(rss_kib "$server") KiB"
    load --mode sessions --sessions 10000 --email fast@example.com --tokens-file "$work/tokens" \
      --in-flight "$in_flight" --connections "$connections"
    for i in $(seq "$runs"); do
      run "health run $i" --mode health
      run "validate run $i (10,000 sessions in rotation)" --mode validate --tokens-file "$work/tokens"
      run "refresh run $i" --mode refresh --email fast@example.com
    done
    stop ;;
  floor)
    prepare_tokens
    # Tracing on but every call sampled out (the default parent-based sampler, with no caller
    # trace and a ratio of 0): no span is made, the endpoint is never dialled.
    sampled_out=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_TRACES_SAMPLER=parentbased_always_off)
    # Every call traced, to a collector that keeps up (examples/otlp_sink.rs), and then with
    # nothing listening where the collector should be: spans are made and dropped
    # (authd_trace_spans_dropped_total), and calls must not wait for them.
    "$sink_bin" 127.0.0.1:4319 &
    sink=$!
    collector_up=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4319 OTEL_TRACES_SAMPLER=always_on)
    collector_down=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:9 OTEL_TRACES_SAMPLER=always_on)
    serve_floor 127.0.0.1:50072; floor=$!
    # The same floor on authd's allocator: how much of authd's standing against the floor is
    # the allocator's.
    serve_floor 127.0.0.1:50073 "$floor_mimalloc_bin"; floor_mimalloc=$!
    serve_authd 1; off=$!
    serve_authd 2 "${sampled_out[@]}"; sampled=$!
    serve_authd 3 "${collector_up[@]}"; traced_up=$!
    serve_authd 4 "${collector_down[@]}"; traced_down=$!
    serve_authd 5; health=$!
    declare -A servers=(
      [floor]="floor $floor 127.0.0.1:50072 validate"
      [floor_mimalloc]="floor_mimalloc $floor_mimalloc 127.0.0.1:50073 validate"
      [health]="health $health 127.0.0.1:50085 health"
      [off]="off $off 127.0.0.1:50081 validate"
      [sampled_out]="sampled_out $sampled 127.0.0.1:50082 validate"
      [traced_collector_up]="traced_collector_up $traced_up 127.0.0.1:50083 validate"
      [traced_collector_down]="traced_collector_down $traced_down 127.0.0.1:50084 validate")
    # Reference, then subject.
    pairs=("floor off" "floor sampled_out" "health off" "health sampled_out" "health floor"
      "floor_mimalloc off" "floor floor_mimalloc"
      "floor traced_collector_up" "floor traced_collector_down")
    wait_for 127.0.0.1:5007{2,3} 127.0.0.1:5008{1,2,3,4,5}
    pairs_side_by_side | tee "$work/medians"
    judge "$work/medians" "${floor_targets[@]}"
    kill "$floor" "$floor_mimalloc" "$off" "$sampled" "$traced_up" "$traced_down" "$health" "$sink"
    wait "$floor" "$floor_mimalloc" "$off" "$sampled" "$traced_up" "$traced_down" "$health" \
      "$sink" 2>/dev/null || true ;;
  ab)
    [[ -n ${BENCH_AB_DIR:-} ]] || { echo "the ab phase needs BENCH_AB_DIR: the other build's authd" >&2; exit 2; }
    prepare_tokens
    serve_authd 1; after=$!
    authd_bin=$BENCH_AB_DIR/authd serve_authd 2; before=$!
    declare -A servers=(
      [before]="before $before 127.0.0.1:50082 validate"
      [after]="after $after 127.0.0.1:50081 validate")
    # Each build as the other's reference once a round, so that neither place favours it.
    pairs=("before after" "after before")
    wait_for 127.0.0.1:5008{1,2}
    pairs_side_by_side
    kill "$before" "$after"
    wait "$before" "$after" 2>/dev/null || true ;;
  login)
    [[ -f $work/tokens ]] || { echo "the login phase needs the transport phase's tokens" >&2; exit 2; }
    add_users login@example.com
    start
    sleep 1; echo "idle RSS: $(rss_kib "$server") KiB"
    for i in $(seq "$runs"); do
      run "health run $i" --mode health
      run "login run $i" --mode login --email login@example.com
      # Validate as a latency probe (8 in flight), alone and then beside a saturating flood.
      run "validate alone run $i" --mode validate --tokens-file "$work/tokens" --in-flight 8 --connections 1
      load --mode login --email login@example.com --duration "$duration" --in-flight 64 >"$work/flood" &
      flood=$!
      ( while kill -0 $flood 2>/dev/null; do r=$(rss_kib "$server"); echo "$r"; sleep 0.5; done ) >"$work/rss" &
      run "validate during login flood run $i" --mode validate --tokens-file "$work/tokens" --in-flight 8 --connections 1
      wait $flood
      echo "## the flood"; tail -n +2 "$work/flood"
      peak=$(sort -n "$work/rss" | tail -1)
      echo "peak RSS during the flood: $peak KiB"
    done
    stop ;;
  busycore)
    [[ -f $work/tokens ]] || { echo "the busycore phase needs the transport phase's tokens" >&2; exit 2; }
    start
    for i in $(seq "$runs"); do
      run "validate alone run $i" --mode validate --tokens-file "$work/tokens" --in-flight 8 --connections 1
      # Pure CPU, no memory traffic, at the lowest priority Linux has: what is left of the
      # flood's effect once authd's hashing is taken out.
      chrt --idle 0 python3 -c 'while True: pass' &
      spinner=$!
      run "validate beside an idle-priority CPU loop run $i" --mode validate --tokens-file "$work/tokens" --in-flight 8 --connections 1
      kill $spinner; wait $spinner 2>/dev/null || true
    done
    stop ;;
  cleanup)
    add_users fast@example.com "${cheap_argon2[@]}" 2>/dev/null || true
    start "${cheap_argon2[@]}"
    # A live session for the seed below to copy.
    load --mode refresh --email fast@example.com --duration 1s --in-flight 1 >/dev/null
    for i in $(seq "$runs"); do
      # 1,000,000 ended sessions with their refresh rows, copied from a live one: their
      # tokens expired at their rotation.
      case $backend in
        sqlite) python3 - "$work/authd.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
db.execute("CREATE TEMP TABLE ended AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) SELECT randomblob(16) AS id FROM n")
db.execute("""INSERT INTO sessions (id, user_id, created_at, revoked_at, revoked_reason)
SELECT e.id, s.user_id, s.created_at, NULL, NULL FROM ended e, (SELECT * FROM sessions LIMIT 1) AS s""")
db.execute("""INSERT INTO refresh_tokens (session_id, user_id, session_started_at, generation, secret_hash, rotated_at, expires_at, retried)
SELECT e.id, r.user_id, r.session_started_at, 1, randomblob(32), r.rotated_at, r.rotated_at, 0 FROM ended e, (SELECT * FROM refresh_tokens LIMIT 1) AS r""")
db.commit()
PY
        ;;
        postgres) psql -qh 127.0.0.1 -U postgres -d "$db" -c "
CREATE TEMP TABLE ended AS SELECT gen_random_uuid() AS id FROM generate_series(1, 1000000);
INSERT INTO sessions (id, user_id, created_at)
SELECT e.id, s.user_id, s.created_at FROM ended e, (SELECT * FROM sessions LIMIT 1) AS s;
INSERT INTO refresh_tokens (session_id, user_id, session_started_at, generation, secret_hash,
  rotated_at, expires_at, retried)
SELECT e.id, r.user_id, r.session_started_at, 1, sha256(convert_to(e.id::text, 'UTF8')),
       r.rotated_at, r.rotated_at, FALSE
FROM ended e, (SELECT * FROM refresh_tokens LIMIT 1) AS r" ;;
      esac
      run "refresh without cleanup run $i" --mode refresh --email fast@example.com
      ( sleep 1; began=$(date +%s.%N); $authd cleanup 2>/dev/null
        echo "cleanup: $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $began}") s" ) &
      cleaner=$!
      run "refresh during cleanup of 1,000,000 sessions run $i" --mode refresh --email fast@example.com
      wait $cleaner
    done
    stop ;;
  pgbench)
    [[ $backend == postgres ]] || continue
    psql -qh 127.0.0.1 -U postgres -c "CREATE DATABASE ${db}_pgbench" >/dev/null
    AUTH_DATABASE_URL="postgres://postgres@127.0.0.1:5432/${db}_pgbench" $authd migrate >/dev/null
    psql -qh 127.0.0.1 -U postgres -d "${db}_pgbench" -f scripts/pgbench/seed.sql >/dev/null
    for i in $(seq "$runs"); do
      for script in refresh update; do
        echo "## pgbench $script.sql run $i"
        psql -qh 127.0.0.1 -U postgres -d "${db}_pgbench" -f scripts/pgbench/reset.sql >/dev/null
        pgbench -h 127.0.0.1 -U postgres -n -M prepared -D gen=1 -c "$in_flight" -j 2 \
          -T "${duration%s}" -f "scripts/pgbench/$script.sql" "${db}_pgbench" | grep -E "^(tps|latency)"
      done
    done
    psql -qh 127.0.0.1 -U postgres -c "DROP DATABASE ${db}_pgbench WITH (FORCE)" >/dev/null ;;
  esac
done
# A missed target fails the run, once every phase has printed its figures.
exit "$missed"
