#!/usr/bin/env bash
# scripts/test.sh — the whole halt-envoy test run (what CI runs through .ci/run).
#
#   bash scripts/test.sh                     everything: peers + gofmt + vet + staticcheck + go test ./... + memory ceiling
#                                            + fuzz + soak + promtool; ends "test.sh: OK" only when all ran
#   bash scripts/test.sh -run TestX ./pkg/...   go test args are passed through (instead of ./...);
#                                            the fuzz stage is skipped then
#
# On Debian 12 as root it installs (apt) and starts every service the tests talk to, on free
# loopback ports, exports their endpoints, runs the Go stages, and stops everything on exit.
#
# Environment knobs:
#   HALT_SKIP_PEERS=1   no apt, no peers: only the Go stages (tests that need a peer skip)
#   HALT_PEERS_ONLY=1   start the peers, print their env, tear down and stop (no Go stages)
#   HALT_FUZZTIME=100000x  -fuzztime for each fuzz target (a count by default: a duration races
#                       the fuzz coordinator's deadline in Go 1.26, golang/go#75804, and fails a
#                       loaded run with a bare "context deadline exceeded" and no crasher)
#   PEERS_KEEP_DIR=1    keep the peers' data dirs and logs after the run
#   PEERS_CACHE=DIR     build/download cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/halt-envoy-peers)
#
# Exported for the tests (when peers run):
#   HALT_TEST_PEERS=1 (tests must fail, not skip, when an endpoint below is missing)
#   REDIS_ADDR, REDIS_REGION2_ADDR (a second standalone Redis: another region's store),
#   REDIS_CLUSTER_ADDRS (6 nodes, comma list), REDIS_CLUSTER_BASE_PORT,
#   REDIS_SENTINEL_ADDR, REDIS_SENTINEL_MASTER (mymaster), REDIS_SENTINEL_MASTER_ADDR,
#   REDIS_SENTINEL_REPLICA_ADDR, MEMCACHED_ADDR, PG_DSN, PG_DATA_DIR, PG_BIN, MONGO_URI
#   (mongo-java-server: MongoDB wire protocol, atomic per document), FERRETDB_URI (FerretDB v1,
#   SQLite handler), DYNAMODB_ENDPOINT (DynamoDB Local)
#   PostgreSQL can be stopped/restarted by fault tests on the same port with
#     runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA_DIR" -l "$PG_DATA_DIR/../server.log" -w stop|start|restart
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# go and the caches need HOME; CI's environment may lack it
if [ -z "${HOME:-}" ]; then HOME=$(getent passwd "$(id -u)" | cut -d: -f6); export HOME; fi

# shellcheck source=scripts/peers.sh
source scripts/peers.sh

T0=$(peers_now)
STAGE=setup
halt_on_exit() {
  local rc=$1
  if [ "$rc" != 0 ]; then
    echo "test.sh: FAILED in stage '$STAGE' (exit $rc) after $(peers_since "$T0")" >&2
  fi
  peers_teardown "$rc"
}
trap 'halt_on_exit $?' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

say() { echo "==> $*"; }

# ---------- Go toolchain ----------
for d in /usr/local/go/bin "${GOROOT:-/nonexistent}/bin" "$HOME/go/bin"; do
  [ -d "$d" ] && case ":$PATH:" in *":$d:"*) ;; *) PATH=$PATH:$d ;; esac
done
export PATH
command -v go >/dev/null || { echo "test.sh: 'go' not found (expected in /usr/local/go/bin)" >&2; exit 1; }
say "$(go version)"

# ---------- peers ----------
PEERS_SECS=
if [ -n "${HALT_SKIP_PEERS:-}" ]; then
  say "HALT_SKIP_PEERS set: no peers (tests that need one will skip)"
  unset HALT_TEST_PEERS
else
  STAGE=peers
  # Slow ones first, in the background: FerretDB (cold build ~3 min), DynamoDB Local (JVM start
  # ~6 s; its jar comes from npm) and mongo-java-server (JVM; its jars come from Maven Central).
  # Meanwhile apt runs and the fast peers start in the foreground.
  # Every port is reserved by free_port before any start, so the parallel starts can't collide.
  JOBS=() # "PID NAME LOG"
  bg_job() { # NAME CMD... : run CMD in the background; its output goes to a log shown at the end
    local name=$1 log=$PEERS_DIR/job-$1.log; shift
    ("$@") >"$log" 2>&1 </dev/null &
    record_tree $! "job-$name"
    JOBS+=("$! $name $log")
  }
  timed() { # NAME CMD...: run CMD, print how long it took
    local t name=$1; shift
    t=$(peers_now)
    "$@" || { echo "peer $name: FAILED after $(peers_since "$t")" >&2; return 1; }
    echo "peer $name: up in $(peers_since "$t")"
  }

  FERRET_PORT=$(free_port)
  bg_job ferretdb timed ferretdb peers_start_ferretdb "$FERRET_PORT" sqlite
  DDB_PORT=$(free_port)
  ddb_job_started=
  if command -v java >/dev/null && command -v npm >/dev/null; then
    bg_job ddblocal timed dynamodb-local peers_start_ddblocal "$DDB_PORT"; ddb_job_started=1
  fi
  MONGOJAVA_PORT=$(free_port)
  mongojava_job_started=
  if command -v javac >/dev/null && command -v mvn >/dev/null; then
    bg_job mongojava timed mongo-java-server peers_start_mongojava "$MONGOJAVA_PORT"; mongojava_job_started=1
  fi
  # warm the Go module cache for the project meanwhile (read-only: never touches go.mod/go.sum)
  [ -f go.mod ] && bg_job gomod go list -mod=readonly -e -deps -test ./...

  t=$(peers_now)
  apt_pkgs=(redis-server redis-tools memcached postgresql openjdk-17-jre-headless openjdk-17-jdk-headless maven curl ca-certificates 'prometheus?')
  command -v npm >/dev/null || apt_pkgs+=(npm)
  peers_apt "${apt_pkgs[@]}"
  echo "apt: done in $(peers_since "$t")"
  [ -n "$ddb_job_started" ] || bg_job ddblocal timed dynamodb-local peers_start_ddblocal "$DDB_PORT"
  [ -n "$mongojava_job_started" ] || bg_job mongojava timed mongo-java-server peers_start_mongojava "$MONGOJAVA_PORT"

  p=$(free_port)
  timed redis peers_start_redis "$p"
  export REDIS_ADDR=127.0.0.1:$p

  p=$(free_port)
  timed redis-region2 peers_start_redis "$p"
  export REDIS_REGION2_ADDR=127.0.0.1:$p

  p=$(free_port 6)
  timed redis-cluster peers_start_redis_cluster "$p"
  export REDIS_CLUSTER_BASE_PORT=$p
  REDIS_CLUSTER_ADDRS=$(seq -s, -f "127.0.0.1:%g" "$p" $((p + 5)))
  export REDIS_CLUSTER_ADDRS

  p=$(free_port 3)
  timed redis-sentinel peers_start_redis_sentinel "$p" $((p + 1)) $((p + 2))
  export REDIS_SENTINEL_ADDR=127.0.0.1:$((p + 2)) REDIS_SENTINEL_MASTER=mymaster
  export REDIS_SENTINEL_MASTER_ADDR=127.0.0.1:$p REDIS_SENTINEL_REPLICA_ADDR=127.0.0.1:$((p + 1))

  p=$(free_port)
  timed memcached peers_start_memcached "$p"
  export MEMCACHED_ADDR=127.0.0.1:$p

  p=$(free_port)
  timed postgres peers_start_postgres "$p"
  export PG_DSN="postgres://postgres@127.0.0.1:$p/postgres?sslmode=disable" PG_DATA_DIR PG_BIN

  # collect the background jobs
  failed=
  for j in "${JOBS[@]}"; do
    read -r pid name log <<<"$j"
    if wait "$pid"; then
      [ "$name" = gomod ] || grep -v '^go: downloading ' "$log"
    elif [ "$name" = gomod ]; then
      : # only a cache warm-up: go vet/test will report real problems
    else
      echo "background job $name failed:" >&2; grep -v '^go: downloading ' "$log" >&2; failed=1
    fi
  done
  [ -z "$failed" ] || exit 1
  export MONGO_URI="mongodb://127.0.0.1:$MONGOJAVA_PORT/" FERRETDB_URI="mongodb://127.0.0.1:$FERRET_PORT/"
  export DYNAMODB_ENDPOINT="http://127.0.0.1:$DDB_PORT"
  export HALT_TEST_PEERS=1

  PEERS_SECS=$(peers_since "$T0")
  say "all peers up in $PEERS_SECS"
  env | grep -E '^(HALT_TEST_PEERS|REDIS_[A-Z0-9_]+|MEMCACHED_ADDR|PG_DSN|PG_DATA_DIR|PG_BIN|MONGO_URI|FERRETDB_URI|DYNAMODB_ENDPOINT)=' | sort |
    tee "$PEERS_DIR/env" | sed 's/^/    /'

  if [ -n "${HALT_PEERS_ONLY:-}" ]; then
    say "HALT_PEERS_ONLY set: stopping here (peers are torn down now)"
    exit 0
  fi
fi

# ---------- Go stages ----------
# go test args: "$@" if given (plus ./... when they name no package), else ./...
looks_like_pkg() { [[ $1 == . || $1 == ./* || $1 == ../* || $1 == */... || $1 == github.com/* ]]; }
ARGS=("$@")
PKGS=()
for a in "$@"; do looks_like_pkg "$a" && PKGS+=("$a"); done
((${#PKGS[@]})) || { PKGS=(./...); ARGS+=(./...); }

STAGE=gofmt
go_files=()
while IFS= read -r f; do [ -f "$f" ] && go_files+=("$f"); done < <(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*')
if ((${#go_files[@]})); then
  say "gofmt -l (${#go_files[@]} files)"
  unformatted=$(gofmt -l "${go_files[@]}")
  if [ -n "$unformatted" ]; then
    echo "test.sh: these files are not gofmt-formatted (run: gofmt -w FILE):" >&2
    echo "$unformatted" | sed 's/^/    /' >&2
    exit 1
  fi
else
  say "gofmt: no .go files tracked, skipped"
fi

STAGE="go vet"
say "go vet ${PKGS[*]}"
peers_run_tracked go-vet go vet "${PKGS[@]}"

STAGE=staticcheck
# Pinned: a newer staticcheck may bring new checks, and a finding fails the run.
# A finding that is wrong for a line is silenced there with //lint:ignore CHECK reason.
say "staticcheck ${PKGS[*]}"
peers_run_tracked staticcheck go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 "${PKGS[@]}"

STAGE="go test"
# go test -json goes through internal/testsummary, which echoes build errors, failed tests and
# one line per package, then lists every skipped test by name and gives a verdict: FAIL on a
# failure or on a skip that is neither named in scripts/allowed-skips.txt nor (without peers, or
# with -short) a peer/short skip of internal/testutil; PARTIAL when such peer/short skips
# happened; OK otherwise.
short=
for a in "${ARGS[@]}"; do case $a in -short | -short=true | -test.short | -test.short=true) short=1 ;; esac; done
go build -o "$PEERS_DIR/testsummary" ./internal/testsummary
summary_args=(-module "$(go list -m)" -allow scripts/allowed-skips.txt -verdict "$PEERS_DIR/verdict")
[ "${HALT_TEST_PEERS:-}" != 1 ] || summary_args+=(-peers)
[ -z "$short" ] || summary_args+=(-short)
say "go test -json -race -count=1 -timeout 40m ${ARGS[*]} | testsummary ${summary_args[*]}"
go_test() {
  go test -json -race -count=1 -timeout 40m "${ARGS[@]}" 2>&1 | tee "$PEERS_DIR/gotest.json" |
    "$PEERS_DIR/testsummary" "${summary_args[@]}"
}
peers_run_tracked go-test go_test
tests_verdict=$(cat "$PEERS_DIR/verdict")

STAGE=memory
memory_summary="skipped (go test args given)"
if (($# == 0)); then
  # The resident-memory ceiling of the in-memory store: TestMemoryBound checks RSS only
  # without the race detector (whose shadow memory would make the figure meaningless), so it
  # runs again here, alone and without -race, and must pass, not skip.
  say "go test -count=1 -run '^TestMemoryBound\$' -v ./pkg/backends/memory (no -race: the memory ceiling)"
  memory_test() { go test -count=1 -timeout 10m -run '^TestMemoryBound$' -v ./pkg/backends/memory 2>&1 | tee "$PEERS_DIR/memory.log"; }
  peers_run_tracked memory memory_test
  grep -q -- '--- PASS: TestMemoryBound ' "$PEERS_DIR/memory.log" ||
    { echo "test.sh: TestMemoryBound did not pass without -race" >&2; exit 1; }
  memory_summary="ok ($(grep -o 'peak [0-9]* MiB' "$PEERS_DIR/memory.log" | head -1) for 1M keys)"
  # The engine's exact allocation count per decision, and the Redis store's per Apply of
  # several ops: sync.Pool drops pooled scratch at random under the race detector, so
  # TestCheckAllocs and TestApplyAllocs are built only without it.
  say "go test -count=1 -run '^(TestCheckAllocs|TestApplyAllocs)\$' -v ./internal/engine ./pkg/backends/redis (no -race: allocations per decision)"
  allocs_test() { go test -count=1 -timeout 5m -run '^(TestCheckAllocs|TestApplyAllocs)$' -v ./internal/engine ./pkg/backends/redis 2>&1 | tee "$PEERS_DIR/allocs.log"; }
  peers_run_tracked allocs allocs_test
  for t in TestCheckAllocs TestApplyAllocs; do
    grep -q -- "--- PASS: $t " "$PEERS_DIR/allocs.log" ||
      { echo "test.sh: $t did not pass without -race" >&2; exit 1; }
  done
  memory_summary="$memory_summary; allocations per decision ok"
fi

STAGE="test modules"
# Go modules of their own under test/ (test/envoygateway: dependencies the product must
# not take). ./... stops at their go.mod, so vet and test each here, with the same peers.
mods_summary="skipped (go test args given)"
if (($# == 0)); then
  mods=()
  for m in test/*/go.mod; do [ -f "$m" ] && mods+=("$(dirname "$m")"); done
  mods_summary=
  mod_args=(-allow "$PWD/scripts/allowed-skips.txt")
  [ "${HALT_TEST_PEERS:-}" != 1 ] || mod_args+=(-peers)
  for d in "${mods[@]}"; do
    n=$(basename "$d")
    say "go vet ./... && go test -json -race -count=1 ./... in $d (a module of its own) | testsummary"
    mod_test() { # DIR NAME: vet and test one module, its go test -json through testsummary as above
      (cd "$1" && go vet ./... &&
        go test -json -race -count=1 -timeout 20m ./... 2>&1 | tee "$PEERS_DIR/gotest-$2.json" |
        "$PEERS_DIR/testsummary" "${mod_args[@]}" -module "$(go list -m)" -verdict "$PEERS_DIR/verdict-$2")
    }
    peers_run_tracked "gomod-$n" mod_test "$d" "$n"
    mods_summary+="$d $(cat "$PEERS_DIR/verdict-$n") "
  done
  mods_summary=${mods_summary% }
fi

STAGE=fuzz
fuzz_summary="skipped (go test args given)"
if (($# == 0)); then
  fuzz_targets=()
  while IFS= read -r f; do
    [ -f "$f" ] || continue
    while IFS= read -r name; do fuzz_targets+=("$(dirname "$f") $name"); done \
      < <(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$f")
  done < <(git ls-files -co --exclude-standard '*_test.go' 2>/dev/null | grep -Ev '(^|/)(testdata|vendor)/' | sort)
  for t in "${fuzz_targets[@]}"; do
    read -r dir name <<<"$t"
    say "fuzz $name in ./$dir for ${HALT_FUZZTIME:-100000x}"
    peers_run_tracked "fuzz-$name" go test -run '^$' -fuzz "^${name}\$" -fuzztime "${HALT_FUZZTIME:-100000x}" "./$dir"
  done
  fuzz_summary="${#fuzz_targets[@]} targets x ${HALT_FUZZTIME:-100000x}"
fi

STAGE=soak
soak_summary="skipped (go test args given)"
if (($# == 0)); then
  # A one-minute soak against halt on the test Redis (memory:// without peers), run alone
  # after the tests so its latency figures are not those of a machine busy with them.
  say "soak ${HALT_SOAK:-60s} (cmd/halt-soak)"
  peers_run_tracked soak env HALT_SOAK="${HALT_SOAK:-60s}" go test -count=1 -run '^TestSoakLong$' -v -timeout 10m ./cmd/halt-soak
  soak_summary="${HALT_SOAK:-60s} ok"
fi

STAGE=promtool
prom_summary="no deploy/prometheus/alerts.yaml"
if [ -f deploy/prometheus/alerts.yaml ]; then
  if command -v promtool >/dev/null; then
    say "promtool check rules deploy/prometheus/alerts.yaml"
    peers_run_tracked promtool promtool check rules deploy/prometheus/alerts.yaml
    # the alerts' unit tests: each alert fires on its case and stays quiet on the other
    say "promtool test rules deploy/prometheus/alerts_test.yaml"
    peers_run_tracked promtool-test promtool test rules deploy/prometheus/alerts_test.yaml
    prom_summary="rules checked and unit-tested"
  else
    echo "test.sh: WARNING: promtool not installed, deploy/prometheus/alerts.yaml not checked" >&2
    prom_summary="skipped (no promtool)"
  fi
fi

STAGE=summary
# OK only when everything ran: every peer up, every stage run, no test skipped but the allowed.
result=OK
partial=()
peers_summary="peers up in $PEERS_SECS"
if [ -z "$PEERS_SECS" ]; then
  peers_summary="no peers"; partial+=("no peers (HALT_SKIP_PEERS): tests that need one skipped")
fi
[ "$tests_verdict" = OK ] || partial+=("go test skipped tests (listed above)")
case $mods_summary in *PARTIAL*) partial+=("test modules: $mods_summary") ;; esac
(($# == 0)) || partial+=("go test args given: fuzz, memory and soak stages not run")
case $prom_summary in skipped*) partial+=("promtool: $prom_summary") ;; esac
((${#partial[@]} == 0)) || result=PARTIAL
echo "test.sh: $result — gofmt, go vet, staticcheck, go test ($tests_verdict), test modules: $mods_summary, memory: $memory_summary," \
  "fuzz: $fuzz_summary, soak: $soak_summary, promtool: $prom_summary; $peers_summary; total $(peers_since "$T0")"
for p in "${partial[@]}"; do echo "test.sh: PARTIAL because $p"; done
