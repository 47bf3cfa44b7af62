#!/usr/bin/env bash
# bench-localfirst.sh: three halt-envoy processes on one Redis, one hot key of 10,000 a
# minute, under as much closed-loop load as the machine gives (one halt-bench per
# process, all at once), decided exactly and local-first (max_overshoot 0.01), against
# the empty handler and the in-memory store in the same run (issue 16; docs/benchmarks.md,
# "Local-first, three processes"). Not part of scripts/test.sh.
#
#   REDIS_ADDR=127.0.0.1:6379 bash scripts/bench-localfirst.sh            # the rounds
#   REDIS_ADDR=127.0.0.1:6379 WINDOWS=3 bash scripts/bench-localfirst.sh  # and the windows
#
# ROUNDS (default 3) rounds of DUR (default 15s) each: empty handler; then memory (exact),
# Redis exact and Redis local_first on the hot key (its minute spent in the warm-up: the
# measured calls are refused) and "_under" a limit never reached (every call admitted);
# three processes each. Per mode it prints the requests
# per second of the three together, the admitted (ok) calls, the server CPU per call (the
# three processes' mean, from /proc through halt-bench --pid) and its ratio to the empty
# handler's of the same round. With WINDOWS=N it then runs local_first for N whole
# minutes and prints what the three admitted in each one (halt_decisions_total, scraped
# half-way through each window, when every admission of it is long done), and the store
# ops per decision of the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${REDIS_ADDR:?set REDIS_ADDR (host:port of a Redis the processes share)}"
ROUNDS=${ROUNDS:-3} DUR=${DUR:-15s} WINDOWS=${WINDOWS:-0} CONC=${CONC:-20}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work" ./cmd/halt-envoy ./cmd/halt-bench
# The hot key: 10,000 a minute, spent in the warm-up, so the measured calls are refused
# (as the issue's closed loop has it); "under": 10^9 a minute, never reached, so every
# measured call is admitted (the path local_first takes off the store).
lf='consistency: local_first, max_overshoot: 0.01, sync_interval: 100ms'
for c in "exact 10000" "local_first 10000 $lf" "exact_under 1000000000" "local_first_under 1000000000 $lf"; do
  read -r name n extra <<<"$c"
  mkdir -p "$work/$name"
  printf 'domain: bench\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: minute, requests_per_unit: %s%s}\n' "$n" "${extra:+, $extra}" >"$work/$name/c.yaml"
done
base=$((20000 + RANDOM % 20000))

# start MODE: three servers of MODE on ports base+10*i (+1 HTTP); prints their pids.
start() {
  local mode=$1 i port prefix="lfbench-$$-$RANDOM:"
  for i in 0 1 2; do
    port=$((base + 10 * i))
    case $mode in
      empty) "$work/halt-bench" --empty-server "127.0.0.1:$port" >"$work/s$i.log" 2>&1 & ;;
      memory | memory_under) "$work/halt-envoy" --config "$work/${mode/memory/exact}" --store memory:// --grpc-addr "127.0.0.1:$port" \
        --http-addr "127.0.0.1:$((port + 1))" --log-level error >"$work/s$i.log" 2>&1 & ;;
      exact | local_first | exact_under | local_first_under)
        "$work/halt-envoy" --config "$work/$mode" --store "redis://$REDIS_ADDR/0" --store-key-prefix "$prefix" --store-timeout 1s \
          --failure-mode error --local-first-announce 1s --grpc-addr "127.0.0.1:$port" --http-addr "127.0.0.1:$((port + 1))" \
          --log-level error >"$work/s$i.log" 2>&1 & ;;
    esac
    pids+=($!)
    echo $!
  done
}

stop() { for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }

# load MODE DURATION: one halt-bench per server at once; prints "req/s ok cpu_us errors".
load() {
  local mode=$1 dur=$2 i sp bp=()
  sp=($(start "$mode"))
  sleep 1
  for i in 0 1 2; do
    # --warmup 3s: a local_first replica decides exactly for two announcement periods (2 s)
    "$work/halt-bench" --addr "127.0.0.1:$((base + 10 * i))" --descriptor tenant=t1 --concurrency "$CONC" \
      --warmup 3s --duration "$dur" --pid "${sp[$i]}" --json >"$work/b$i.json" 2>"$work/b$i.err" &
    bp+=($!)
  done
  wait "${bp[@]}" || true
  stop "${sp[@]}"
  cat "$work"/b[012].json | tr -d ' \n' | sed 's/}{/}\n{/g' | awk -F'[,:{}]+' '
    { for (i = 1; i < NF; i++) { if ($i == "\"requests_per_s\"") r += $(i+1); if ($i == "\"ok\"") ok += $(i+1);
      if ($i == "\"server_cpu_us_per_request\"") { c += $(i+1); n++ } if ($i == "\"errors\"") e += $(i+1) } }
    END { printf "%.0f %d %.2f %d\n", r, ok, (n ? c / n : 0), e }'
}

echo "3 processes, one hot key (10,000 a minute), concurrency $CONC per process, $DUR per mode, Redis $REDIS_ADDR"
printf '%-6s %-12s %10s %9s %14s %9s %7s\n' round mode req/s ok cpu_us/call vs_empty errors
for r in $(seq 1 "$ROUNDS"); do
  empty=
  for mode in empty memory exact local_first memory_under exact_under local_first_under; do
    read -r rps ok cpu errs < <(load "$mode" "$DUR")
    [ -n "$empty" ] || empty=$cpu
    printf '%-6s %-12s %10s %9s %14s %9s %7s\n' "$r" "$mode" "$rps" "$ok" "$cpu" "$(awk -v a="$cpu" -v b="$empty" 'BEGIN{printf "%.2fx", a/b}')" "$errs"
  done
done

[ "$WINDOWS" -gt 0 ] || exit 0
echo "local_first for $WINDOWS whole minutes: admitted per window by the three together"
sp=($(start local_first))
pids+=("${sp[@]}")
sleep 1
for i in 0 1 2; do
  "$work/halt-bench" --addr "127.0.0.1:$((base + 10 * i))" --descriptor tenant=t1 --concurrency "$CONC" --warmup 0s \
    --duration "$((60 * WINDOWS + 150))s" --json >/dev/null 2>&1 &
done
scrape() { # the sum over the three of a metric's series matching $1
  local i
  for i in 0 1 2; do curl -s "127.0.0.1:$((base + 10 * i + 1))/metrics"; done | grep -E "^$1" | awk '{s += $2} END {printf "%d\n", s}'
}
# midwin: seconds to the next half-way point of a minute window at least 30 s away
midwin() { local d=$(((90 - $(date +%s) % 60) % 60)); [ "$d" -ge 30 ] || d=$((d + 60)); echo "$d"; }
# half-way through a window after the warm-up, then through each next one
sleep "$(midwin)"
prev=$(scrape 'halt_decisions_total\{domain="bench",result="ok"')
ops0=$(scrape 'halt_local_first_store_ops_total') dec0=$(scrape 'halt_local_first_decisions_total')
for w in $(seq 1 "$WINDOWS"); do
  sleep "$(midwin)"
  now=$(scrape 'halt_decisions_total\{domain="bench",result="ok"')
  echo "window $w: admitted $((now - prev)) (bound 10,100; errors and fail-opens: $(scrape 'halt_decisions_total\{domain="bench",result="(error|fail_open)"'))"
  prev=$now
done
ops=$(scrape 'halt_local_first_store_ops_total') dec=$(scrape 'halt_local_first_decisions_total')
awk -v o=$((ops - ops0)) -v d=$((dec - dec0)) 'BEGIN { printf "store ops per decision over those windows: %.4f (%d ops, %d decisions)\n", o / d, o, d }'
stop "${sp[@]}"
