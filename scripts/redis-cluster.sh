#!/usr/bin/env bash
# A 3-master Redis Cluster (no replicas) of Debian's redis-server on 127.0.0.1, for tests.
set -euo pipefail

LOG_NAME=redis-cluster.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/_lib.sh
source "$SCRIPT_DIR/_lib.sh"

usage() {
  cat <<EOF
Usage: scripts/redis-cluster.sh start|stop|status|cli [ARGS...]

Runs a Redis Cluster of 3 masters and no replicas (Debian's redis-server, installed
with apt-get when missing) on 127.0.0.1, daemonized, without persistence, with
maxmemory-policy noeviction.

Commands:
  start    start the nodes, create the cluster (redis-cli --cluster create), wait for
           cluster_state:ok on every node; prints
           "redis cluster ready on 127.0.0.1:P0,127.0.0.1:P1,127.0.0.1:P2".
           Already running and healthy -> exit 0.
  stop     SHUTDOWN NOSAVE every node (SIGTERM/SIGKILL if needed), then wipe the
           data dir, so the next start makes a fresh cluster. Stopped -> exit 0.
  status   print "running ..." (exit 0) or "stopped" (exit 3).
  cli      redis-cli -c against the first node, e.g. scripts/redis-cluster.sh cli cluster nodes

Then run the cluster test:
  REDIS_CLUSTER_ADDRS=127.0.0.1:17000,127.0.0.1:17001,127.0.0.1:17002 go test -run TestRedisCluster -v ./worker/

Environment (defaults in brackets):
  REDIS_CLUSTER_PORT          first port; the nodes use PORT, PORT+1, PORT+2 [17000]
                              (and the cluster bus PORT+10000...)
  REDIS_CLUSTER_DIR           dir for the nodes' pid, log, nodes.conf
                              [\${TMPDIR:-/tmp}/kbridge-redis-cluster-\$REDIS_CLUSTER_PORT]
  REDIS_CLUSTER_TIMEOUT       seconds to wait for PONG and cluster_state:ok [60]
EOF
}

REDIS_CLUSTER_PORT=${REDIS_CLUSTER_PORT:-17000}
REDIS_CLUSTER_DIR=${REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/kbridge-redis-cluster-$REDIS_CLUSTER_PORT}
REDIS_CLUSTER_TIMEOUT=${REDIS_CLUSTER_TIMEOUT:-60}
PORTS=("$REDIS_CLUSTER_PORT" $((REDIS_CLUSTER_PORT + 1)) $((REDIS_CLUSTER_PORT + 2)))

addrs() { local IFS=,; local a=("${PORTS[@]/#/127.0.0.1:}"); echo "${a[*]}"; }

ensure_redis() { ensure_cmds redis-server:redis-server redis-cli:redis-tools; }

rcli() { local port=$1; shift; timeout 10 redis-cli -h 127.0.0.1 -p "$port" "$@"; }

node_dir() { echo "$REDIS_CLUSTER_DIR/$1"; }

# read_pid PORT -> the pid of our redis-server on PORT (guards against pid reuse)
read_pid() {
  local f pid
  f=$(node_dir "$1")/redis.pid
  [[ -f $f ]] || return 1
  pid=$(<"$f") || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  pid_alive "$pid" && pid_cmdline_has "$pid" redis-server && pid_cmdline_has "$pid" ":$1" || return 1
  printf '%s' "$pid"
}

wait_pong() {
  local port=$1 deadline=$((SECONDS + REDIS_CLUSTER_TIMEOUT))
  until [[ $(rcli "$port" ping 2>/dev/null || true) == PONG ]]; do
    (( SECONDS >= deadline )) && return 1
    sleep 0.1
  done
}

cluster_ok() { rcli "$1" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok'; }

wait_cluster_ok() {
  local port deadline=$((SECONDS + REDIS_CLUSTER_TIMEOUT))
  for port in "${PORTS[@]}"; do
    until cluster_ok "$port"; do
      (( SECONDS >= deadline )) && return 1
      sleep 0.2
    done
  done
}

all_running() {
  local port
  for port in "${PORTS[@]}"; do read_pid "$port" >/dev/null || return 1; done
}

cmd_start() {
  if all_running && wait_cluster_ok; then
    log "already running on $(addrs)"
    echo "redis cluster ready on $(addrs)"
    return 0
  fi
  # A partial or broken cluster from an earlier run: start over.
  local port pid
  for port in "${PORTS[@]}"; do
    if read_pid "$port" >/dev/null || [[ -d $REDIS_CLUSTER_DIR ]]; then
      log "a partial or unhealthy cluster is left from an earlier run: stopping it and starting afresh"
      cmd_stop
      break
    fi
  done
  ensure_redis
  for port in "${PORTS[@]}"; do
    port_open "$port" && die "port $port on 127.0.0.1 is already in use by another process"
    port_open $((port + 10000)) && die "cluster bus port $((port + 10000)) on 127.0.0.1 is already in use"
  done
  log "starting redis $(redis-server --version | awk '{print $3}' | sed 's/^v=//') cluster nodes on $(addrs) (data $REDIS_CLUSTER_DIR)"
  for port in "${PORTS[@]}"; do
    local dir
    dir=$(node_dir "$port")
    mkdir -p "$dir"
    redis-server \
      --bind 127.0.0.1 --port "$port" \
      --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 5000 \
      --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" \
      --maxmemory 0 --maxmemory-policy noeviction --save '' --appendonly no </dev/null 8>&- 9>&- ||
      { tail -n 20 "$dir/redis.log" >&2 2>/dev/null || true; die "redis-server on port $port failed to start"; }
    register_instance redis "$dir" "$port"
  done
  for port in "${PORTS[@]}"; do
    wait_pong "$port" || { tail -n 20 "$(node_dir "$port")/redis.log" >&2 || true; die "node 127.0.0.1:$port did not answer PING"; }
  done
  log "creating the cluster (3 masters, no replicas)"
  timeout "$REDIS_CLUSTER_TIMEOUT" redis-cli --cluster create "${PORTS[@]/#/127.0.0.1:}" \
    --cluster-replicas 0 --cluster-yes >"$REDIS_CLUSTER_DIR/create.log" 2>&1 ||
    { cat "$REDIS_CLUSTER_DIR/create.log" >&2; die "redis-cli --cluster create failed"; }
  wait_cluster_ok || { rcli "${PORTS[0]}" cluster info >&2 || true; die "cluster_state:ok not reached within ${REDIS_CLUSTER_TIMEOUT}s"; }
  for port in "${PORTS[@]}"; do
    pid=$(read_pid "$port" || echo '?')
    log "node 127.0.0.1:$port pid $pid"
  done
  echo "redis cluster ready on $(addrs)"
}

cmd_stop() {
  local port pid any=0
  for port in "${PORTS[@]}"; do
    pid=$(read_pid "$port") || continue
    any=1
    log "stopping node pid $pid on 127.0.0.1:$port (shutdown nosave)"
    rcli "$port" shutdown nosave >/dev/null 2>&1 || true
    if ! wait_pid_gone "$pid" 30; then
      log "still running after SHUTDOWN; sending SIGTERM"
      terminate "$pid" 10
    fi
  done
  (( any )) || log "not running (data dir $REDIS_CLUSTER_DIR)"
  if [[ -d $REDIS_CLUSTER_DIR ]]; then
    rm -rf "$REDIS_CLUSTER_DIR"
    (( any )) && log "stopped; wiped $REDIS_CLUSTER_DIR"
  fi
  return 0
}

cmd_status() {
  local port pid out=()
  for port in "${PORTS[@]}"; do
    pid=$(read_pid "$port") || { echo "stopped"; return 3; }
    out+=("127.0.0.1:$port pid $pid")
  done
  local state=down
  cluster_ok "${PORTS[0]}" && state=ok
  echo "running (${out[*]}), cluster_state:$state, data $REDIS_CLUSTER_DIR"
}

main() {
  local cmd=${1:-}
  case $cmd in
    start)  cmd_start ;;
    stop)   cmd_stop ;;
    status) cmd_status ;;
    cli)    shift; ensure_redis; exec redis-cli -c -h 127.0.0.1 -p "${PORTS[0]}" "$@" ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) log "unknown command: $cmd"; usage >&2; exit 2 ;;
  esac
}

main "$@"
