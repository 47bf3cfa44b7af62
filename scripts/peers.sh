# scripts/peers.sh — start real test peers for halt-envoy on free loopback ports.
#
# Meant to be sourced (by scripts/test.sh) on Debian 12, as root:
#
#   source scripts/peers.sh
#   trap peers_teardown EXIT
#   peers_apt redis-server memcached ...
#   p=$(free_port); peers_start_redis "$p"
#
# * Every server binds 127.0.0.1 (DynamoDB Local binds all interfaces: it has no bind option).
#   Default ports (6379, 5432, 11211, ...) are never used: the machine may run its own services there.
# * Runtime state (data dirs, logs) lives under $PEERS_DIR (a fresh temp dir per run).
#   $PEERS_DIR/pids tells peers_teardown what to stop (see record_pid); ports handed out by
#   free_port are listed in $PEERS_DIR/ports so that parallel starts never get the same one.
# * Things that must be built or downloaded (FerretDB, the DynamoDB Local jar) are cached under
#   $PEERS_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/halt-envoy-peers) and reused across runs.
#
# Traps of this machine, learned the hard way:
# * initdb/postgres refuse to run as root        -> runuser -u postgres
# * memcached refuses to run as root without -u  -> -u root
# * FerretDB v1.24.2 from the module proxy panics at start (empty build/version/version.txt)
#                                                -> build from a copy with that file filled in
# * DynamoDB Local does NOT exit when its port is taken (logs a BindException and hangs)
#                                                -> check the port first, probe with a real ListTables
# * DynamoDB Local's jar ships inside npm amplify-dynamodb-simulator; it needs openjdk-17-jre-headless.
# * No real mongod can be had here (not in Debian; the npm/PyPI/Maven wrappers download it at
#   run time from hosts we cannot reach). FerretDB v1 (SQLite and PostgreSQL handlers alike)
#   loses concurrent updates. mongo-java-server (Maven Central) applies them atomically, but
#   announces a wire version the Go driver v2 refuses -> scripts/mongo-java-server/MongoPeer.java
#   runs it announcing MongoDB 4.4; Maven (apt: maven) resolves its classpath, the JDK's
#   source launcher (apt: openjdk-17-jdk-headless) runs it.

PEERS_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) # scripts/, for the peers' own files
PEERS_DIR_OWNED= # teardown removes PEERS_DIR only when it made it
[ -n "${PEERS_DIR:-}" ] || { PEERS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/halt-envoy-peers.XXXXXX"); PEERS_DIR_OWNED=1; }
PEERS_CACHE=${PEERS_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/halt-envoy-peers}
mkdir -p "$PEERS_DIR" "$PEERS_CACHE"
chmod 755 "$PEERS_DIR" # the postgres user must be able to traverse it
PEERS_PIDS=$PEERS_DIR/pids
PEERS_PORTS=$PEERS_DIR/ports # ports handed out by free_port in this run (also across subshells)
touch "$PEERS_PIDS" "$PEERS_PORTS"
FERRETDB_VERSION=${FERRETDB_VERSION:-v1.24.2}
DDBLOCAL_NPM=${DDBLOCAL_NPM:-amplify-dynamodb-simulator@2.9.30} # ships the DynamoDB Local 1.25.1 jar

# ---------- helpers ----------
peers_log() { echo "peers: $*" >&2; }
peers_now() { echo "${EPOCHREALTIME:-$(date +%s.%N)}"; }
peers_since() { awk -v a="$1" -v b="$(peers_now)" 'BEGIN { printf "%.1fs", b - a }'; } # START -> "1.2s"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port [COUNT]: prints the first of COUNT consecutive free ports, and reserves them for this run.
# port+10000 must be free too (the Redis Cluster bus). Ports are drawn below the kernel's ephemeral
# range, so that no outgoing connection can grab one between this check and the server's bind.
free_port() {
  local n=${1:-1} lo=20000 hi p i ok eph
  eph=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null) || eph=32768
  hi=$((${eph:-32768} - 10000 - n))
  ((hi - lo >= 500)) || hi=$((40000 - n))
  for _ in $(seq 1 500); do
    p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo))); ok=1
    for ((i = 0; i < n; i++)); do
      if grep -qx "$((p + i))" "$PEERS_PORTS" || ! port_free $((p + i)) || ! port_free $((p + i + 10000)); then
        ok=0; break
      fi
    done
    if ((ok)); then
      for ((i = 0; i < n; i++)); do echo $((p + i)) >>"$PEERS_PORTS"; done
      echo "$p"; return 0
    fi
  done
  peers_log "free_port: no free port found"; return 1
}

# Teardown records, one a line in $PEERS_PIDS: "KIND ID START SIGNAL NAME"
#   pid  PID START SIGNAL NAME   a server process
#   tree PID START -      NAME   a background helper job, stopped with all its descendants
#   pg   DATADIR - -      NAME   PostgreSQL, stopped with pg_ctl whatever its PID is by then
#                                (fault tests may restart it)
# START is the process start time (/proc/PID/stat field 22): a PID that was reused is left alone.
peers_starttime() { # PID -> start time in clock ticks since boot; fails for a zombie or no process
  local stat rest f
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  rest=${stat##*) } # fields 3.. (the command name may hold spaces)
  read -r -a f <<<"$rest"
  [ "${f[0]}" != Z ] || return 1 # exited, not yet reaped (kill -0 still succeeds on it)
  echo "${f[19]}"
}
peers_alive() { # PID START
  [ "$(peers_starttime "$1")" = "$2" ]
}
record_pid() { echo "pid $1 $(peers_starttime "$1" || echo 0) $2 $3" >>"$PEERS_PIDS"; }
record_tree() { echo "tree $1 $(peers_starttime "$1" || echo 0) - $2" >>"$PEERS_PIDS"; }
peers_pg_pid() { # DATADIR -> PID of its running postmaster
  local pid
  pid=$(head -1 "$1/postmaster.pid" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$1" && echo "$pid"
}

# peers_descendants PID: prints every descendant PID (reads /proc; no procps needed).
peers_descendants() {
  local f stat rest pid ppid kids=()
  for f in /proc/[0-9]*/stat; do
    read -r stat 2>/dev/null <"$f" || continue
    pid=${stat%% *}; rest=${stat##*) }; rest=${rest#* }; ppid=${rest%% *}
    [ "$ppid" = "$1" ] && kids+=("$pid")
  done
  for pid in "${kids[@]}"; do echo "$pid"; peers_descendants "$pid"; done
}
peers_kill_tree() { # PID SIGNAL: signal PID and its descendants
  local pids
  pids=$(peers_descendants "$1")
  kill -s "$2" "$1" 2>/dev/null
  # shellcheck disable=SC2086
  [ -n "$pids" ] && kill -s "$2" $pids 2>/dev/null
  return 0
}

# peers_run_tracked NAME CMD...: run CMD as a child that peers_teardown stops (with its descendants)
# if the run is interrupted. Waiting with `wait` also lets a signal's trap run at once.
peers_run_tracked() {
  local name=$1 pid; shift
  "$@" &
  pid=$!
  record_tree "$pid" "$name"
  wait "$pid"
}

# wait_ready PID SECONDS CMD...: poll CMD every 0.1 s; fail early if PID dies.
wait_ready() {
  local pid=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$pid" != - ] && ! kill -0 "$pid" 2>/dev/null; then peers_log "peer died while waiting for: $*"; return 1; fi
    ((SECONDS < end)) || { peers_log "timeout (${secs}s) waiting for: $*"; return 1; }
    sleep 0.1
  done
}
peers_fail() { # MESSAGE LOGFILE...: print the message and the tail of each log, return 1
  local msg=$1 f; shift
  peers_log "$msg"
  for f in "$@"; do [ -f "$f" ] && { echo "--- tail of $f" >&2; tail -n 30 "$f" >&2; }; done
  return 1
}

# peers_apt PKG... — install what is missing (idempotent; ~0.1 s when all are installed).
# A package written as NAME? is optional: if it can't be installed, warn and go on.
peers_apt() {
  local need=() opt=() p
  for p in "$@"; do
    if [[ $p == *\? ]]; then p=${p%\?}; dpkg -s "$p" >/dev/null 2>&1 || opt+=("$p")
    else dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); fi
  done
  ((${#need[@]} + ${#opt[@]})) || return 0
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends)
  peers_log "apt-get install ${need[*]} ${opt[*]}"
  timeout 600 apt-get -o DPkg::Lock::Timeout=600 update -qq || peers_log "warning: apt-get update failed"
  # one apt run for all (faster); on failure, retry the required ones alone, then each optional one
  timeout 1200 "${apt[@]}" install "${need[@]}" "${opt[@]}" >"$PEERS_DIR/apt.log" 2>&1 && return 0
  if ((${#need[@]})); then
    timeout 1200 "${apt[@]}" install "${need[@]}" >"$PEERS_DIR/apt.log" 2>&1 ||
      peers_fail "apt-get install ${need[*]} failed" "$PEERS_DIR/apt.log" || return 1
  fi
  for p in "${opt[@]}"; do
    timeout 1200 "${apt[@]}" install "$p" >"$PEERS_DIR/apt-$p.log" 2>&1 ||
      { peers_log "WARNING: optional package $p could not be installed (going on without it):"; tail -n 5 "$PEERS_DIR/apt-$p.log" >&2; }
  done
  return 0
}

# peers_teardown [RC] — stop everything this run started (newest first), then remove $PEERS_DIR.
# Safe to call more than once. Keeps $PEERS_DIR (logs) when RC (default: $?) is not 0.
peers_teardown() {
  local rc=${1:-$?} kind id start sig name alive pid f
  set +e
  [ -f "$PEERS_PIDS" ] || return "$rc"
  # 1. ask politely, newest first
  while read -r kind id start sig name; do
    case $kind in
    pid) peers_alive "$id" "$start" && kill -s "$sig" "$id" 2>/dev/null ;;
    tree) peers_alive "$id" "$start" && peers_kill_tree "$id" TERM ;;
    pg) pid=$(peers_pg_pid "$id") && kill -INT "$pid" ;; # SIGINT = fast shutdown
    esac
  done < <(tac "$PEERS_PIDS")
  # 2. wait up to 10 s
  for _ in $(seq 1 100); do
    alive=0
    while read -r kind id start sig name; do
      case $kind in
      pid | tree) peers_alive "$id" "$start" && alive=1 ;;
      pg) peers_pg_pid "$id" >/dev/null && alive=1 ;;
      esac
    done <"$PEERS_PIDS"
    ((alive)) || break
    sleep 0.1
  done
  # 3. force
  while read -r kind id start sig name; do
    case $kind in
    pid) peers_alive "$id" "$start" && { peers_log "force-killing $name ($id)"; kill -KILL "$id" 2>/dev/null; } ;;
    tree) peers_alive "$id" "$start" && { peers_log "force-killing $name ($id)"; peers_kill_tree "$id" KILL; } ;;
    pg) pid=$(peers_pg_pid "$id") && { peers_log "force-killing $name ($pid)"; kill -KILL "$pid"; } ;;
    esac
  done <"$PEERS_PIDS"
  # 4. safety net: a process still running from our state dir (e.g. a peer that a test restarted):
  #    its command line names $PEERS_DIR, or it is a redis-server working in it (redis retitles itself)
  #    (only for a PEERS_DIR of our own making: a caller's PEERS_DIR could be shared with others)
  local cmd parts cwd
  [ -n "$PEERS_DIR_OWNED" ] && for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    [ "$pid" = $$ ] && continue
    mapfile -d '' -t parts 2>/dev/null <"$f" || continue
    cmd=${parts[*]}
    if [[ $cmd != *"$PEERS_DIR/"* ]]; then
      [[ $cmd == redis-server* ]] || continue
      cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) && [[ $cwd/ == "$PEERS_DIR/"* ]] || continue
    fi
    peers_log "killing leftover process $pid: ${cmd:0:120}"
    kill -KILL "$pid" 2>/dev/null
  done
  : >"$PEERS_PIDS"
  # keep the logs when failing (or asked to), unless there is nothing but our bookkeeping
  if [ -z "$PEERS_DIR_OWNED" ]; then
    rm -f "$PEERS_PORTS"
  elif [ -n "${PEERS_KEEP_DIR:-}" ] ||
    { [ "$rc" != 0 ] && [ -n "$(find "$PEERS_DIR" -mindepth 1 -maxdepth 1 ! -name pids ! -name ports)" ]; }; then
    peers_log "peer state and logs kept in $PEERS_DIR"
  else
    rm -rf "$PEERS_DIR"
  fi
  return "$rc"
}

# ---------- Redis (apt: redis-server redis-tools; 7.0.15) ----------
redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }
peers_start_redis() { # PORT [extra redis-server args...]
  local port=$1; shift
  local dir=$PEERS_DIR/redis-$port; mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir" \
    --logfile "$dir/redis.log" "$@" </dev/null >"$dir/stdout.log" 2>&1 &
  record_pid $! TERM "redis-$port"
  wait_ready $! 20 redis_ping "$port" || peers_fail "redis on $port did not start" "$dir/redis.log" "$dir/stdout.log"
}
redis_cluster_ok() { # BASEPORT: all 6 nodes ok, 3 masters + 3 replicas with links up
  local p
  for p in $(seq "$1" $(($1 + 5))); do
    redis-cli -p "$p" cluster info | grep -q '^cluster_state:ok' || return 1
  done
  [ "$(redis-cli -p "$1" cluster nodes | awk '$3 ~ /master/' | wc -l)" = 3 ] &&
    [ "$(redis-cli -p "$1" cluster nodes | awk '$3 ~ /slave/ && $8 == "connected"' | wc -l)" = 3 ] &&
    for p in $(seq "$1" $(($1 + 5))); do # every node must see the whole cluster
      [ "$(redis-cli -p "$p" cluster nodes | grep -c 'connected')" = 6 ] || return 1
    done
}
peers_start_redis_cluster() { # BASEPORT (uses BASEPORT..BASEPORT+5 and their +10000 bus ports)
  local base=$1 p nodes=()
  for p in $(seq "$base" $((base + 5))); do
    peers_start_redis "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 2000 --repl-diskless-sync-delay 0 || return 1
    nodes+=("127.0.0.1:$p")
  done
  timeout 60 redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
    >"$PEERS_DIR/redis-cluster-create.log" 2>&1 ||
    peers_fail "redis-cli --cluster create failed" "$PEERS_DIR/redis-cluster-create.log" || return 1
  wait_ready - 60 redis_cluster_ok "$base" || peers_fail "redis cluster on $base not ready" "$PEERS_DIR/redis-$base/redis.log"
}
sentinel_ok() { # SENTINELPORT MASTERPORT REPLICAPORT
  [ "$(redis-cli -p "$1" sentinel get-master-addr-by-name mymaster 2>/dev/null | tail -1)" = "$2" ] &&
    redis-cli -p "$3" info replication | grep -q '^master_link_status:up' &&
    [ "$(redis-cli -p "$1" sentinel replicas mymaster 2>/dev/null | grep -cx "$3")" -ge 1 ]
}
peers_start_redis_sentinel() { # MASTERPORT REPLICAPORT SENTINELPORT  (master name: mymaster)
  local m=$1 r=$2 s=$3 dir=$PEERS_DIR/sentinel-$3
  peers_start_redis "$m" --repl-diskless-sync-delay 0 || return 1
  peers_start_redis "$r" --replicaof 127.0.0.1 "$m" || return 1
  mkdir -p "$dir"
  cat >"$dir/sentinel.conf" <<EOF
bind 127.0.0.1
port $s
dir $dir
logfile $dir/sentinel.log
sentinel monitor mymaster 127.0.0.1 $m 1
sentinel down-after-milliseconds mymaster 2000
sentinel failover-timeout mymaster 10000
EOF
  redis-server "$dir/sentinel.conf" --sentinel </dev/null >"$dir/stdout.log" 2>&1 & # sentinel rewrites its config
  record_pid $! TERM "sentinel-$s"
  wait_ready $! 30 sentinel_ok "$s" "$m" "$r" || peers_fail "sentinel on $s not ready" "$dir/sentinel.log"
}

# ---------- Memcached (apt: memcached; 1.6.18) ----------
memc_ok() (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'version\r\n' >&3 && read -r -t 2 l <&3 && [[ $l == VERSION* ]])
peers_start_memcached() { # PORT   (-u root is mandatory when running as root)
  local log=$PEERS_DIR/memcached-$1.log
  memcached -u root -l 127.0.0.1 -p "$1" -U 0 -m 64 -c 1024 </dev/null >"$log" 2>&1 &
  record_pid $! TERM "memcached-$1"
  wait_ready $! 10 memc_ok "$1" || peers_fail "memcached on $1 did not start" "$log"
}

# ---------- PostgreSQL (apt: postgresql; 15.x) ----------
# initdb/postgres refuse to run as root: run them as the 'postgres' user the package creates.
# The port, socket dir and speed settings go into the data dir's postgresql.conf, so a plain
#   runuser -u postgres -- $PG_BIN/pg_ctl -D $PG_DATA_DIR -l $PG_DATA_DIR/../server.log -w start|stop|restart
# (what fault tests do) brings it back on the same port.
peers_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
peers_start_postgres() { # PORT -> sets PG_BIN, PG_DATA_DIR; DSN postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable
  local port=$1 dir=$PEERS_DIR/pg-$1
  PG_BIN=${PG_BIN:-$(peers_pg_bin)}
  [ -x "$PG_BIN/initdb" ] || { peers_log "no PostgreSQL server binaries (PG_BIN=$PG_BIN)"; return 1; }
  PG_DATA_DIR=$dir/data
  mkdir -p "$dir" && chown postgres:postgres "$dir" && chmod 700 "$dir" || return 1
  runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA_DIR" -U postgres --auth=trust --no-sync \
    -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 || peers_fail "initdb failed" "$dir/initdb.log" || return 1
  cat >>"$PG_DATA_DIR/postgresql.conf" <<EOF

# --- halt-envoy test peer ---
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  echo "pg $PG_DATA_DIR - - postgres-$port" >>"$PEERS_PIDS"
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA_DIR" -l "$dir/server.log" -w -t 60 start \
    </dev/null >/dev/null 2>&1 || peers_fail "postgres on $port did not start" "$dir/server.log" || return 1
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" || peers_fail "postgres on $port not ready" "$dir/server.log"
}

# ---------- FerretDB v1 (MongoDB wire protocol; built from the Go module proxy) ----------
# `go install ...@v1.24.2` builds, but the binary panics at start (the module zip has an empty
# build/version/version.txt), so build from a writable copy of the module with that file filled in.
peers_build_ferretdb() { # -> prints binary path (cached; concurrent runs wait on a lock)
  local out=$PEERS_CACHE/ferretdb-$FERRETDB_VERSION src mod
  [ -x "$out" ] && { echo "$out"; return 0; }
  (
    flock 9
    [ -x "$out" ] && exit 0
    peers_log "building FerretDB $FERRETDB_VERSION (once; cached in $out)"
    mod=$(cd / && peers_run_tracked ferretdb-download env GOWORK=off GOFLAGS=-mod=mod \
      timeout 900 go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$mod" ] || { peers_log "FerretDB module download failed"; exit 1; }
    src=$(mktemp -d "$PEERS_DIR/ferretdb-src.XXXXXX") # under PEERS_DIR: teardown's safety net sees the compilers
    trap 'rm -rf "$src"' EXIT
    cp -r "$mod"/. "$src" && chmod -R u+w "$src" && echo "$FERRETDB_VERSION" >"$src/build/version/version.txt" || exit 1
    (cd "$src" && peers_run_tracked ferretdb-build env GOWORK=off GOFLAGS= CGO_ENABLED=0 \
      timeout 1800 go build -trimpath -o "$src/ferretdb.bin" ./cmd/ferretdb) || exit 1
    cp "$src/ferretdb.bin" "$out.tmp.$$" && mv "$out.tmp.$$" "$out"
  ) 9>"$PEERS_CACHE/ferretdb.lock" || return 1
  echo "$out"
}
peers_start_ferretdb() { # PORT [sqlite|POSTGRES_URL]  -> mongodb://127.0.0.1:PORT/
  local port=$1 backend=${2:-sqlite} bin dir=$PEERS_DIR/ferretdb-$1
  bin=$(peers_build_ferretdb) || return 1
  mkdir -p "$dir/data"
  local args=(--listen-addr="127.0.0.1:$port" --state-dir="$dir" --debug-addr=- --telemetry=disable --log-level=warn)
  if [ "$backend" = sqlite ]; then args+=(--handler=sqlite --sqlite-url="file:$dir/data/")
  else args+=(--handler=postgresql --postgresql-url="$backend"); fi
  port_free "$port" || { peers_log "port $port busy"; return 1; }
  "$bin" "${args[@]}" </dev/null >"$dir/ferretdb.log" 2>&1 &
  record_pid $! TERM "ferretdb-$port"
  # `ferretdb ping` is a no-op without --setup-database, so probe the port
  wait_ready $! 30 tcp_open "$port" || peers_fail "ferretdb on $port did not start" "$dir/ferretdb.log"
}

# ---------- DynamoDB Local (Amazon's emulator 1.25.1; jar from npm, Java from apt) ----------
ddb_ready() {
  curl -sf -m 5 -X POST "http://127.0.0.1:$1/" -H 'X-Amz-Target: DynamoDB_20120810.ListTables' \
    -H 'Content-Type: application/x-amz-json-1.0' -H 'X-Amz-Date: 20200101T000000Z' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20200101/us-east-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=x' \
    -d '{}' | grep -q TableNames
}
peers_fetch_ddblocal() { # -> prints the emulator dir (cached; concurrent runs wait on a lock)
  local d=$PEERS_CACHE/ddblocal
  [ -f "$d/package/emulator/DynamoDBLocal.jar" ] && { echo "$d/package/emulator"; return 0; }
  command -v npm >/dev/null || { peers_log "npm not found (needed to fetch DynamoDB Local)"; return 1; }
  (
    flock 9
    [ -f "$d/package/emulator/DynamoDBLocal.jar" ] && exit 0
    peers_log "fetching DynamoDB Local from npm $DDBLOCAL_NPM (once; cached in $d)"
    tmp=$(mktemp -d "$PEERS_DIR/ddblocal-fetch.XXXXXX")
    trap 'rm -rf "$tmp" "$d.tmp.$$"' EXIT
    (cd "$tmp" && peers_run_tracked ddblocal-fetch timeout 600 npm pack "$DDBLOCAL_NPM" --silent >/dev/null &&
      tar xzf ./*.tgz && rm -f ./*.tgz) || exit 1
    [ -f "$tmp/package/emulator/DynamoDBLocal.jar" ] || { peers_log "no DynamoDBLocal.jar in $DDBLOCAL_NPM"; exit 1; }
    mv "$tmp" "$d.tmp.$$" && rm -rf "$d" && mv "$d.tmp.$$" "$d"
  ) 9>"$PEERS_CACHE/ddblocal.lock" || return 1
  echo "$d/package/emulator"
}
peers_start_ddblocal() { # PORT -> http://127.0.0.1:PORT (listens on all interfaces)
  local port=$1 emu log=$PEERS_DIR/ddblocal-$1.log
  emu=$(peers_fetch_ddblocal) || return 1
  command -v java >/dev/null || { peers_log "java not found (apt openjdk-17-jre-headless)"; return 1; }
  port_free "$port" || { peers_log "port $port busy (DynamoDB Local would hang, not exit)"; return 1; }
  (cd "$emu" && exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.library.path=./DynamoDBLocal_lib \
    -jar DynamoDBLocal.jar -inMemory -sharedDb -disableTelemetry -port "$port") </dev/null >"$log" 2>&1 &
  record_pid $! TERM "ddblocal-$port"
  wait_ready $! 90 ddb_ready "$port" || peers_fail "DynamoDB Local on $port did not start" "$log"
}

# ---------- mongo-java-server (MongoDB wire protocol, in memory; Maven Central, run by the JDK) ----------
peers_fetch_mongojava() { # -> prints the classpath (resolved by Maven once per pom; concurrent runs wait on a lock)
  local pom=$PEERS_SRC/mongo-java-server/pom.xml sum cp
  sum=$(sha256sum "$pom" | cut -c1-16)
  cp=$PEERS_CACHE/mongo-java-server-$sum.classpath
  [ -s "$cp" ] && { cat "$cp"; return 0; }
  command -v mvn >/dev/null || { peers_log "mvn not found (apt maven)"; return 1; }
  (
    flock 9
    [ -s "$cp" ] && exit 0
    peers_log "resolving mongo-java-server from Maven Central (once; cached in $cp)"
    peers_run_tracked mongojava-fetch timeout 600 mvn -q -B -Dstyle.color=never -f "$pom" dependency:build-classpath \
      -Dmdep.outputFile="$cp.tmp.$$" >"$PEERS_DIR/mongojava-mvn.log" 2>&1 &&
      [ -s "$cp.tmp.$$" ] && mv "$cp.tmp.$$" "$cp" ||
      { rm -f "$cp.tmp.$$"; peers_fail "mvn dependency:build-classpath failed" "$PEERS_DIR/mongojava-mvn.log"; }
  ) 9>"$PEERS_CACHE/mongojava.lock" || return 1
  cat "$cp"
}
peers_start_mongojava() { # PORT -> mongodb://127.0.0.1:PORT/
  local port=$1 cp log=$PEERS_DIR/mongojava-$1.log
  cp=$(peers_fetch_mongojava) || return 1
  command -v javac >/dev/null || { peers_log "javac not found (apt openjdk-17-jdk-headless: the source launcher needs it)"; return 1; }
  port_free "$port" || { peers_log "port $port busy"; return 1; }
  java -Xmx256m -XX:+UseSerialGC -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$cp" \
    "$PEERS_SRC/mongo-java-server/MongoPeer.java" "$port" </dev/null >"$log" 2>&1 &
  record_pid $! TERM "mongojava-$port"
  wait_ready $! 60 tcp_open "$port" || peers_fail "mongo-java-server on $port did not start" "$log"
}
