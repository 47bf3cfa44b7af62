#!/usr/bin/env bash
# bench-peers.sh: halt-envoy side by side with its peers, in one run, on this machine.
#
# Builds halt-envoy and halt-bench from this tree and the peers from their public sources
# through the package registries (the reference Envoy rate-limit service,
# envoyproxy/ratelimit, through the Go module proxy; Limitador's server through cargo from
# crates.io), starts a Redis of its own on a free loopback port, and measures every case
# with halt-bench in interleaved rounds (round 1: every case, round 2: every case, ...), so
# that each figure has an empty handler measured minutes apart in the same conditions.
# Peers' code is built under the work directory, never copied into the repository.
#
# Every limit is equivalent across servers: a fixed window (the reference has no other
# algorithm) of 1,000,000 calls per second per key, so every answer is OK and each call
# costs one counter update; --keys distinct keys.
#
# Reported per case (median of the rounds): requests/s, p50/p99, server CPU per call (the
# server process's user+system time from /proc over the calls answered) and its ratio to
# the empty handler of the same round (ext_authz cases: to the empty ext_authz handler;
# 5-descriptor cases also to the same server's 1-descriptor call).
#
# Not part of scripts/test.sh (it takes minutes). Run it on a machine as quiet as you can
# get, under nice when the machine is shared:
#
#   nice -n 19 bash scripts/bench-peers.sh --rounds 3
#
# Needs: go, redis-server (apt redis-server), python3 (the summary), curl; cargo for
# Limitador (with apt protobuf-compiler, clang, libclang-dev, installed when missing and
# running as root).
set -euo pipefail

usage() {
	cat <<'EOF'
usage: bench-peers.sh [flags]
  --rounds N          interleaved rounds (default 3)
  --duration D        measured time per case, halt-bench syntax (default 10s)
  --warmup D          load before measuring, not counted (default 1s)
  --keys N            distinct keys (default 10000)
  --concurrency N     calls in flight (default 50)
  --cases LIST        comma-separated cases to run (default: all that could be built)
  --ref-version V     envoyproxy/ratelimit module version (default the pinned one)
  --work DIR          build and run directory (default: a new temporary directory)
  --out FILE          the summary table, Markdown (default WORK/summary.md)
  --no-limitador      do not try to build Limitador
  --dry-run           print the plan (cases, rounds, settings) and exit
  -h, --help          this text
cases: empty empty-5 halt-memory halt-redis ref-redis halt-redis-5 ref-redis-5
       limitador-memory limitador-redis empty-authz halt-authz-redis
EOF
}

ALL_CASES="empty empty-5 halt-memory halt-redis ref-redis halt-redis-5 ref-redis-5 limitador-memory limitador-redis empty-authz halt-authz-redis"
ROUNDS=3 DURATION=10s WARMUP=1s KEYS=10000 CONC=50 CASES="" WORK="" OUT="" LIMITADOR=1 DRY=0
# The reference's module version: its last commit served by the Go module proxy when this
# script was written (the module has no tagged release newer than v1.4.0).
REF_VERSION=v1.4.1-0.20260122083618-3fb702589d36
LIMITADOR_CRATE=limitador-server

die() { echo "bench-peers: $*" >&2; exit 2; }
need_arg() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
is_uint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

while [[ $# -gt 0 ]]; do
	case $1 in
	--rounds) need_arg "$@"; is_uint "$2" || die "--rounds: want a positive integer, got '$2'"; ROUNDS=$2; shift 2 ;;
	--duration) need_arg "$@"; [[ $2 =~ ^[0-9]+(ms|s|m)$ ]] || die "--duration: want e.g. 10s, got '$2'"; DURATION=$2; shift 2 ;;
	--warmup) need_arg "$@"; [[ $2 =~ ^[0-9]+(ms|s|m)$ ]] || die "--warmup: want e.g. 1s, got '$2'"; WARMUP=$2; shift 2 ;;
	--keys) need_arg "$@"; is_uint "$2" || die "--keys: want a positive integer, got '$2'"; KEYS=$2; shift 2 ;;
	--concurrency) need_arg "$@"; is_uint "$2" || die "--concurrency: want a positive integer, got '$2'"; CONC=$2; shift 2 ;;
	--cases) need_arg "$@"; CASES=${2//,/ }; shift 2 ;;
	--ref-version) need_arg "$@"; [[ $2 =~ ^v[0-9A-Za-z.+-]+$ ]] || die "--ref-version: want a module version (vX.Y.Z...), got '$2'"; REF_VERSION=$2; shift 2 ;;
	--work) need_arg "$@"; WORK=$2; shift 2 ;;
	--out) need_arg "$@"; OUT=$2; shift 2 ;;
	--no-limitador) LIMITADOR=0; shift ;;
	--dry-run) DRY=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument '$1'" ;;
	esac
done
if [[ -z $CASES ]]; then
	CASES=$ALL_CASES
fi
for c in $CASES; do
	[[ " $ALL_CASES " == *" $c "* ]] || die "--cases: unknown case '$c' (cases: $ALL_CASES)"
done

if ((DRY)); then
	echo "rounds=$ROUNDS duration=$DURATION warmup=$WARMUP keys=$KEYS concurrency=$CONC"
	echo "reference=github.com/envoyproxy/ratelimit@$REF_VERSION limitador=$([[ $LIMITADOR == 1 ]] && echo "crates.io $LIMITADOR_CRATE" || echo off)"
	echo "cases=$CASES"
	exit 0
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/bench-peers.XXXXXX)}
mkdir -p "$WORK"/bin "$WORK"/runs
WORK=$(cd "$WORK" && pwd)
OUT=${OUT:-$WORK/summary.md}
LOG=$WORK/bench.log
PIDS=()
log() { echo "bench-peers: $*" | tee -a "$LOG" >&2; }

# The peers' helpers of scripts/test.sh: free_port (below the ephemeral range, never
# handed out twice in a run), tcp_open, wait_ready, peers_start_redis and peers_teardown,
# with their state under the work directory.
PEERS_DIR=$WORK/peers
mkdir -p "$PEERS_DIR"
# shellcheck source=scripts/peers.sh
source "$REPO/scripts/peers.sh"

cleanup() {
	local p rc=$?
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	peers_teardown "$rc" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# port VAR: set VAR to a free loopback port (peers.sh's free_port).
port() {
	local p
	p=$(free_port) || die "no free loopback port"
	printf -v "$1" %s "$p"
}
# wait_for CMD...: retry CMD for up to 30 s, while the server started last
# ($SERVER_PID) runs.
wait_for() { wait_ready "${SERVER_PID:--}" 30 "$@"; }
stop_pid() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	local keep=() p
	for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

declare -A UNAVAILABLE=()

# ---------- build ----------
log "work directory $WORK"
log "building halt-envoy and halt-bench from $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
(cd "$REPO" && nice -n 19 go build -o "$WORK/bin/halt-envoy" ./cmd/halt-envoy && nice -n 19 go build -o "$WORK/bin/halt-bench" ./cmd/halt-bench)

wants() { [[ " $CASES " == *" $1 "* ]]; }
wants_prefix() { [[ " $CASES " == *" $1"* ]]; }

if wants_prefix ref-; then
	log "building the reference: go install github.com/envoyproxy/ratelimit/src/service_cmd@$REF_VERSION (Go module proxy)"
	# Outside any module, so that go install resolves the reference's own go.mod.
	if ! (cd "$WORK" && GOBIN=$WORK/bin GOFLAGS=-mod=mod nice -n 19 go install "github.com/envoyproxy/ratelimit/src/service_cmd@$REF_VERSION") >>"$LOG" 2>&1; then
		UNAVAILABLE[ref]="go install github.com/envoyproxy/ratelimit/src/service_cmd@$REF_VERSION failed (see $LOG)"
	fi
fi

if wants_prefix limitador-; then
	if ((LIMITADOR == 0)); then
		UNAVAILABLE[limitador]="not tried (--no-limitador)"
	elif ! command -v cargo >/dev/null; then
		UNAVAILABLE[limitador]="no cargo on this machine"
	else
		log "looking up $LIMITADOR_CRATE on crates.io (cargo info)"
		if ! info=$(cd "$WORK" && cargo info "$LIMITADOR_CRATE" 2>&1); then
			echo "$info" >>"$LOG"
			if grep -q "could not find" <<<"$info"; then
				# Kuadrant publishes the library crate (limitador) on crates.io, not the server
				# (limitador-server, the Envoy RLS front end): it is built from its git repository,
				# which this machine cannot reach.
				UNAVAILABLE[limitador]="$LIMITADOR_CRATE is not published on crates.io (only the library crate limitador is); its server is built from Kuadrant's git repository, which is not a package registry"
			else
				UNAVAILABLE[limitador]="cargo info $LIMITADOR_CRATE failed: $(tail -1 <<<"$info")"
			fi
		else
			if ! command -v protoc >/dev/null && [[ $(id -u) == 0 ]]; then
				log "installing protobuf-compiler clang libclang-dev (apt) for Limitador"
				apt-get install -y protobuf-compiler clang libclang-dev >>"$LOG" 2>&1 || true
			fi
			log "building Limitador: cargo install $LIMITADOR_CRATE (slow)"
			if ! nice -n 19 cargo install --locked --root "$WORK/cargo" "$LIMITADOR_CRATE" >>"$LOG" 2>&1; then
				UNAVAILABLE[limitador]="cargo install $LIMITADOR_CRATE failed (see $LOG)"
			fi
		fi
	fi
	[[ -z ${UNAVAILABLE[limitador]:-} ]] || log "Limitador: not built: ${UNAVAILABLE[limitador]}"
fi
[[ -z ${UNAVAILABLE[ref]:-} ]] || log "reference: not built: ${UNAVAILABLE[ref]}"

# ---------- configuration ----------
CFG=$WORK/config
mkdir -p "$CFG/one" "$CFG/five" "$CFG/ref/one/ratelimit/config" "$CFG/ref/five/ratelimit/config" "$CFG/authz/rules" "$CFG/limitador"
fw() { printf '  - key: %s\n    rate_limit:\n      unit: second\n      requests_per_unit: 1000000\n' "$1"; }
{ echo "domain: bench"; echo "descriptors:"; fw user; } >"$CFG/one/bench.yaml"
{ echo "domain: bench"; echo "descriptors:"; for k in user tenant route client api; do fw "$k"; done; } >"$CFG/five/bench.yaml"
cp "$CFG/one/bench.yaml" "$CFG/ref/one/ratelimit/config/"
cp "$CFG/five/bench.yaml" "$CFG/ref/five/ratelimit/config/"
# Limitador: the same fixed window per value of user.
cat >"$CFG/limitador/limits.yaml" <<'EOF'
- namespace: bench
  max_value: 1000000
  seconds: 1
  conditions: []
  variables: [user]
EOF
# ext_authz: every key its own customer on plan bench, one route (GET /v1/items/{id}).
cat >"$CFG/authz/rules/saas.yaml" <<'EOF'
domain: saas
plans:
  bench:
    rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: fixed_window}
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
EOF
"$WORK/bin/halt-bench" --method authz --keys "$KEYS" --plan bench --write-api-keys "$CFG/authz/keys.yaml"
cat >"$CFG/authz/authz.yaml" <<'EOF'
domain: saas
identity:
  - api_key: {header: x-api-key}
api_keys_file: keys.yaml
routes:
  - {method: GET, path: "/v1/items/{id}", cost: 1}
headers: [ietf, x-ratelimit]
upstream_headers: {customer: x-halt-customer, plan: x-halt-plan}
EOF

# ---------- Redis ----------
command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
command -v redis-cli >/dev/null || die "redis-cli not found (apt-get install redis-tools)"
port REDIS_PORT
peers_start_redis "$REDIS_PORT" || die "redis-server did not start (see $PEERS_DIR/redis-$REDIS_PORT)"
REDIS=127.0.0.1:$REDIS_PORT
log "Redis on $REDIS"

# ---------- servers ----------
SERVER_PID="" SERVER_ADDR=""
# start_case CASE: start its server, set SERVER_PID and SERVER_ADDR.
start_case() {
	local g h d
	port g
	case $1 in
	empty | empty-5 | empty-authz)
		"$WORK/bin/halt-bench" --empty-server "127.0.0.1:$g" >>"$LOG" 2>&1 &
		SERVER_PID=$!
		wait_for tcp_open "$g" || return 1
		;;
	halt-*)
		port h
		local args=(--grpc-addr "127.0.0.1:$g" --http-addr "127.0.0.1:$h" --log-level warn --failure-mode error)
		case $1 in
		halt-memory) args+=(--config "$CFG/one" --store memory://) ;;
		halt-redis) args+=(--config "$CFG/one" --store "redis://$REDIS/0") ;;
		halt-redis-5) args+=(--config "$CFG/five" --store "redis://$REDIS/0") ;;
		halt-authz-redis) args+=(--config "$CFG/authz/rules" --authz-config "$CFG/authz/authz.yaml" --store "redis://$REDIS/0") ;;
		esac
		"$WORK/bin/halt-envoy" "${args[@]}" >>"$LOG" 2>&1 &
		SERVER_PID=$!
		wait_for curl -sf "http://127.0.0.1:$h/readyz" || return 1
		;;
	ref-*)
		port h
		port d
		local root=$CFG/ref/one
		[[ $1 == ref-redis-5 ]] && root=$CFG/ref/five
		env RUNTIME_ROOT="$root" RUNTIME_SUBDIRECTORY=ratelimit RUNTIME_APPDIRECTORY=config \
			RUNTIME_WATCH_ROOT=false REDIS_SOCKET_TYPE=tcp REDIS_URL="$REDIS" USE_STATSD=false LOG_LEVEL=warn \
			GRPC_HOST=127.0.0.1 GRPC_PORT="$g" HOST=127.0.0.1 PORT="$h" DEBUG_HOST=127.0.0.1 DEBUG_PORT="$d" \
			"$WORK/bin/service_cmd" >>"$LOG" 2>&1 &
		SERVER_PID=$!
		wait_for curl -sf "http://127.0.0.1:$h/healthcheck" || return 1
		;;
	limitador-*)
		port h
		local store=memory
		[[ $1 == limitador-redis ]] && store="redis redis://$REDIS"
		# shellcheck disable=SC2086 # store is a subcommand and its argument
		"$WORK/cargo/bin/limitador-server" --rls-ip 127.0.0.1 --rls-port "$g" --http-ip 127.0.0.1 --http-port "$h" \
			"$CFG/limitador/limits.yaml" $store >>"$LOG" 2>&1 &
		SERVER_PID=$!
		wait_for tcp_open "$g" || return 1
		;;
	esac
	PIDS+=("$SERVER_PID")
	SERVER_ADDR=127.0.0.1:$g
}

# load_args CASE: halt-bench's arguments for the case's load.
load_args() {
	local a=(--concurrency "$CONC" --connections 1 --duration "$DURATION" --warmup "$WARMUP" --keys "$KEYS" --json)
	case $1 in
	*-authz*) a+=(--method authz) ;;
	*-5) a+=(--descriptor user=u{key} --descriptor tenant=t{key} --descriptor route=r{key} --descriptor client=c{key} --descriptor api=a{key}) ;;
	*) a+=(--descriptor user=u{key}) ;;
	esac
	echo "${a[@]}"
}

available() {
	case $1 in
	ref-*) [[ -z ${UNAVAILABLE[ref]:-} ]] ;;
	limitador-*) [[ -z ${UNAVAILABLE[limitador]:-} ]] ;;
	*) true ;;
	esac
}

# ---------- rounds ----------
for ((r = 1; r <= ROUNDS; r++)); do
	for c in $CASES; do
		available "$c" || continue
		redis-cli -p "$REDIS_PORT" flushall >/dev/null 2>&1 || true
		# A port found free may be taken before the server binds it (other work on the
		# machine): try again on other ports.
		started=0
		for _ in 1 2 3; do
			if start_case "$c"; then
				started=1
				break
			fi
			stop_pid "$SERVER_PID"
		done
		if ((!started)); then
			log "round $r $c: the server did not start (see $LOG)"
			continue
		fi
		load=$(cut -d' ' -f1 /proc/loadavg)
		# shellcheck disable=SC2046 # load_args is a word list
		if "$WORK/bin/halt-bench" --addr "$SERVER_ADDR" --pid "$SERVER_PID" $(load_args "$c") >"$WORK/runs/$r-$c.json" 2>>"$LOG"; then
			log "round $r $c: load $load, $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%.0f/s, %.1f us/call, %d errors" % (r["requests_per_s"], r.get("server_cpu_us_per_request", 0), r["errors"]))' "$WORK/runs/$r-$c.json" 2>/dev/null || echo done)"
			echo "$load" >"$WORK/runs/$r-$c.load"
		else
			log "round $r $c: halt-bench failed (see $LOG)"
		fi
		stop_pid "$SERVER_PID"
	done
done

# ---------- summary ----------
{
	echo "bench-peers.sh on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores"
	echo "rounds=$ROUNDS duration=$DURATION warmup=$WARMUP keys=$KEYS concurrency=$CONC; Redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'); reference $REF_VERSION"
	echo
	python3 - "$WORK/runs" "$ROUNDS" "$CASES" <<'EOF'
import json, os, statistics, sys
runs, rounds, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
names = {
    "empty": "empty handler (RLS)", "empty-5": "empty handler (RLS), 5 descriptors", "halt-memory": "halt-envoy, memory", "halt-redis": "halt-envoy, Redis",
    "ref-redis": "reference, Redis", "halt-redis-5": "halt-envoy, Redis, 5 descriptors",
    "ref-redis-5": "reference, Redis, 5 descriptors", "limitador-memory": "Limitador, memory",
    "limitador-redis": "Limitador, Redis", "empty-authz": "empty handler (ext_authz)",
    "halt-authz-redis": "halt-envoy ext_authz, Redis (key, route, plan)",
}
def load(r, c):
    try:
        with open(os.path.join(runs, "%d-%s.json" % (r, c))) as f:
            d = json.load(f)
        with open(os.path.join(runs, "%d-%s.load" % (r, c))) as f:
            d["load"] = float(f.read())
        return d
    except (OSError, ValueError):
        return None
def base(c):
    return "empty-authz" if "authz" in c else "empty"
def single(c):
    return c[:-2] if c.endswith("-5") else None
def med(xs):
    return statistics.median(xs) if xs else None
print("| server | rounds | load | requests/s | p50 | p99 | server CPU / call | vs empty handler | vs 1 descriptor | errors |")
print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for c in cases:
    rs = [(r, load(r, c)) for r in range(1, rounds + 1)]
    rs = [(r, d) for r, d in rs if d]
    if not rs:
        print("| %s | 0 | | | | | | | | not measured |" % names[c])
        continue
    cpu = [d.get("server_cpu_us_per_request") for _, d in rs if d.get("server_cpu_us_per_request") is not None]
    ratio = []
    one = []
    for r, d in rs:
        b = load(r, base(c))
        if b and b.get("server_cpu_us_per_request") and d.get("server_cpu_us_per_request") is not None:
            ratio.append(d["server_cpu_us_per_request"] / b["server_cpu_us_per_request"])
        s = single(c) and load(r, single(c))
        if s and s.get("server_cpu_us_per_request") and d.get("server_cpu_us_per_request") is not None:
            one.append(d["server_cpu_us_per_request"] / s["server_cpu_us_per_request"])
    loads = [d["load"] for _, d in rs]
    errs = sum(d["errors"] for _, d in rs)
    reqs = sum(d["requests"] for _, d in rs)
    f = lambda v, fmt: (fmt % v) if v is not None else ""
    print("| %s | %d | %.1f-%.1f | %s | %s ms | %s ms | %s µs | %s | %s | %d of %d |" % (
        names[c], len(rs), min(loads), max(loads),
        f(med([d["requests_per_s"] for _, d in rs]), "%.0f"),
        f(med([d["latency_us"]["p50"] / 1000 for _, d in rs]), "%.2f"),
        f(med([d["latency_us"]["p99"] / 1000 for _, d in rs]), "%.2f"),
        f(med(cpu), "%.1f"), f(med(ratio), "%.2fx"), f(med(one), "%.2fx"), errs, reqs))
print()
print("Each figure is the median over the rounds; a ratio is the median of the same-round ratios. load = 1-minute load average at the start of each run.")
EOF
	for k in "${!UNAVAILABLE[@]}"; do
		echo
		echo "Not measured: $k: ${UNAVAILABLE[$k]}"
	done
} >"$OUT"
cat "$OUT"
log "runs in $WORK/runs, summary in $OUT"
