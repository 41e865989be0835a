#!/usr/bin/env bash
# A 3-master Redis Cluster (no replicas by default) of Debian's redis-server on 127.0.0.1, for tests.
set -euo pipefail

LOG_NAME=redis-cluster.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/_lib.sh
source "$SCRIPT_DIR/_lib.sh"

usage() {
  cat <<EOF
Usage: scripts/redis-cluster.sh start|stop|status|cli [ARGS...]
       scripts/redis-cluster.sh kill-node PORT | start-node PORT | pid PORT

Runs a Redis Cluster of 3 masters (and REDIS_CLUSTER_REPLICAS replicas of each,
none by default) of Debian's redis-server (installed with apt-get when missing)
on 127.0.0.1, daemonized, without persistence, with maxmemory-policy noeviction.

Commands:
  start    start the nodes, create the cluster (redis-cli --cluster create), wait for
           cluster_state:ok on every node; prints
           "redis cluster ready on 127.0.0.1:P0,127.0.0.1:P1,127.0.0.1:P2".
           Already running and healthy -> exit 0.
  stop     SHUTDOWN NOSAVE every node (SIGTERM/SIGKILL if needed), then wipe the
           data dir, so the next start makes a fresh cluster. Stopped -> exit 0.
  status   print "running ..." (exit 0) or "stopped" (exit 3).
  cli      redis-cli -c against the first node, e.g. scripts/redis-cluster.sh cli cluster nodes
  kill-node PORT   SIGKILL the node on PORT (a crash: its replica takes over after
                   REDIS_CLUSTER_NODE_TIMEOUT ms)
  start-node PORT  start the node on PORT again, empty, with its nodes.conf: it rejoins
                   the cluster (as a replica of whoever took its slots)
  pid PORT         print the pid of the node on PORT

Then run the cluster test:
  REDIS_CLUSTER_ADDRS=127.0.0.1:17000,127.0.0.1:17001,127.0.0.1:17002 go test -run TestRedisCluster -v ./worker/

Environment (defaults in brackets):
  REDIS_CLUSTER_PORT          first port; the nodes use PORT, PORT+1, ... [17000]
                              (3 × (1 + replicas) of them, and the cluster bus PORT+10000...)
  REDIS_CLUSTER_REPLICAS      replicas per master [0]; with 1: 6 nodes, the first 3
                              masters (start waits until every replica is in sync)
  REDIS_CLUSTER_NODE_TIMEOUT  cluster-node-timeout in ms: how long a master may be
                              unreachable before its replica is promoted [5000]
  REDIS_CLUSTER_DIR           dir for the nodes' pid, log, nodes.conf
                              [\${TMPDIR:-/tmp}/kbridge-redis-cluster-\$REDIS_CLUSTER_PORT]
  REDIS_CLUSTER_TIMEOUT       seconds to wait for PONG and cluster_state:ok [60]

TLS (off by default):
  REDIS_CLUSTER_TLS=1         every node serves TLS only (no plain port), the cluster bus
                              and replication too (tls-cluster, tls-replication). Each node
                              has a certificate of its own: CN and SAN DNS node-PORT plus
                              IP 127.0.0.1 (scripts/certs.sh DIR node-PORT ...), except the
                              first node, which has the set's server.crt (DNS localhost +
                              IP 127.0.0.1), so that a client can seed by the name localhost
  REDIS_CLUSTER_TLS_DIR       the certificates [\$REDIS_CLUSTER_DIR/tls, made by certs.sh]
  REDIS_CLUSTER_TLS_AUTH_CLIENTS  tls-auth-clients: yes, optional or no [no]; the nodes
                              present their certificates to each other either way
  redis-cli here (cli, the checks) uses the set's ca.crt, client.crt and client.key.
EOF
}

REDIS_CLUSTER_PORT=${REDIS_CLUSTER_PORT:-17000}
REDIS_CLUSTER_DIR=${REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/kbridge-redis-cluster-$REDIS_CLUSTER_PORT}
REDIS_CLUSTER_TIMEOUT=${REDIS_CLUSTER_TIMEOUT:-60}
REDIS_CLUSTER_REPLICAS=${REDIS_CLUSTER_REPLICAS:-0}
REDIS_CLUSTER_NODE_TIMEOUT=${REDIS_CLUSTER_NODE_TIMEOUT:-5000}
[[ $REDIS_CLUSTER_REPLICAS =~ ^[0-9]$ ]] || die "REDIS_CLUSTER_REPLICAS must be a number 0-9"
[[ $REDIS_CLUSTER_NODE_TIMEOUT =~ ^[0-9]+$ ]] || die "REDIS_CLUSTER_NODE_TIMEOUT must be milliseconds"
REDIS_CLUSTER_DIR=$(realpath -m -- "$REDIS_CLUSTER_DIR")
REDIS_CLUSTER_TLS=${REDIS_CLUSTER_TLS:-0}
REDIS_CLUSTER_TLS_DIR=$(realpath -m -- "${REDIS_CLUSTER_TLS_DIR:-$REDIS_CLUSTER_DIR/tls}")
REDIS_CLUSTER_TLS_AUTH_CLIENTS=${REDIS_CLUSTER_TLS_AUTH_CLIENTS:-no}
case $REDIS_CLUSTER_TLS_AUTH_CLIENTS in yes|optional|no) ;; *) die "REDIS_CLUSTER_TLS_AUTH_CLIENTS must be yes, optional or no" ;; esac
PORTS=()
for ((i = 0; i < 3 * (1 + REDIS_CLUSTER_REPLICAS); i++)); do PORTS+=($((REDIS_CLUSTER_PORT + i))); done

addrs() { local IFS=,; local a=("${PORTS[@]/#/127.0.0.1:}"); echo "${a[*]}"; }

ensure_redis() { ensure_cmds redis-server:redis-server redis-cli:redis-tools; }

# TLS_CLI: redis-cli's TLS flags when the cluster runs TLS: from the
# environment at start, later from the cluster dir (stop, status and cli work
# without the start's environment).
TLS_CLI=()
tls_cli() {
  local dir=""
  if [[ $REDIS_CLUSTER_TLS == 1 ]]; then
    dir=$REDIS_CLUSTER_TLS_DIR
  elif [[ -s $REDIS_CLUSTER_DIR/tls-dir ]]; then
    dir=$(<"$REDIS_CLUSTER_DIR/tls-dir")
  fi
  TLS_CLI=()
  [[ -z $dir ]] || TLS_CLI=(--tls --cacert "$dir/ca.crt" --cert "$dir/client.crt" --key "$dir/client.key")
}
tls_cli

rcli() { local port=$1; shift; timeout 10 redis-cli -h 127.0.0.1 -p "$port" "${TLS_CLI[@]}" "$@"; }

# node_cert PORT: the certificate (without .crt/.key) of the node on PORT
node_cert() {
  if [[ $1 == "${PORTS[0]}" ]]; then echo "$REDIS_CLUSTER_TLS_DIR/server"; else echo "$REDIS_CLUSTER_TLS_DIR/server-node-$1"; fi
}

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

# start_node PORT: one daemonized cluster node (its nodes.conf kept, if any)
start_node() {
  local port=$1 dir listen
  dir=$(node_dir "$port")
  mkdir -p "$dir"
  listen=(--port "$port")
  if [[ $REDIS_CLUSTER_TLS == 1 ]]; then
    listen=(--port 0 --tls-port "$port" --tls-cluster yes --tls-replication yes
      --tls-cert-file "$(node_cert "$port").crt" --tls-key-file "$(node_cert "$port").key"
      --tls-ca-cert-file "$REDIS_CLUSTER_TLS_DIR/ca.crt" --tls-auth-clients "$REDIS_CLUSTER_TLS_AUTH_CLIENTS")
  fi
  redis-server \
    --bind 127.0.0.1 "${listen[@]}" \
    --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout "$REDIS_CLUSTER_NODE_TIMEOUT" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" \
    --maxmemory 0 --maxmemory-policy noeviction --save '' --appendonly no </dev/null 8>&- 9>&- ||
    { tail -n 20 "$dir/redis.log" >&2 2>/dev/null || true; die "redis-server on port $port failed to start"; }
  register_instance redis "$dir" "$port"
}

# wait_replicas_synced: every replica reports master_link_status:up and every
# master as many connected replicas as configured.
wait_replicas_synced() {
  local port info deadline=$((SECONDS + REDIS_CLUSTER_TIMEOUT))
  for port in "${PORTS[@]}"; do
    while :; do
      info=$(rcli "$port" info replication 2>/dev/null | tr -d '\r' || true)
      if grep -qx 'role:slave' <<<"$info"; then
        grep -qx 'master_link_status:up' <<<"$info" && ! grep -qx 'master_sync_in_progress:1' <<<"$info" && break
      elif grep -qx 'role:master' <<<"$info"; then
        grep -qx "connected_slaves:$REDIS_CLUSTER_REPLICAS" <<<"$info" && break
      fi
      (( SECONDS >= deadline )) && return 1
      sleep 0.2
    done
  done
}

known_port() {
  local p
  for p in "${PORTS[@]}"; do [[ $p == "$1" ]] && return 0; done
  die "port $1 is not a node of this cluster (${PORTS[*]})"
}

cmd_kill_node() {
  local port=${1:?kill-node needs a PORT} pid
  known_port "$port"
  pid=$(read_pid "$port") || die "no node running on 127.0.0.1:$port"
  log "SIGKILL node pid $pid on 127.0.0.1:$port"
  kill -KILL "$pid"
  wait_pid_gone "$pid" 10 || die "node pid $pid did not die"
}

cmd_start_node() {
  local port=${1:?start-node needs a PORT}
  known_port "$port"
  read_pid "$port" >/dev/null && { log "node on 127.0.0.1:$port already running"; return 0; }
  ensure_redis
  port_open "$port" && die "port $port on 127.0.0.1 is already in use by another process"
  start_node "$port"
  wait_pong "$port" || die "node 127.0.0.1:$port did not answer PING"
  log "node 127.0.0.1:$port started (pid $(read_pid "$port" || echo '?'))"
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
  mkdir -p "$REDIS_CLUSTER_DIR"
  local tls_note=""
  if [[ $REDIS_CLUSTER_TLS == 1 ]]; then
    local names=()
    for port in "${PORTS[@]:1}"; do names+=("node-$port"); done
    bash "$SCRIPT_DIR/certs.sh" "$REDIS_CLUSTER_TLS_DIR" "${names[@]}" >&2
    echo "$REDIS_CLUSTER_TLS_DIR" >"$REDIS_CLUSTER_DIR/tls-dir"
    tls_note=", TLS only (a certificate per node, tls-auth-clients $REDIS_CLUSTER_TLS_AUTH_CLIENTS, $REDIS_CLUSTER_TLS_DIR)"
  fi
  log "starting redis $(redis-server --version | awk '{print $3}' | sed 's/^v=//') cluster nodes on $(addrs) (data $REDIS_CLUSTER_DIR$tls_note)"
  for port in "${PORTS[@]}"; do
    start_node "$port"
  done
  for port in "${PORTS[@]}"; do
    wait_pong "$port" || { tail -n 20 "$(node_dir "$port")/redis.log" >&2 || true; die "node 127.0.0.1:$port did not answer PING"; }
  done
  log "creating the cluster (3 masters, $REDIS_CLUSTER_REPLICAS replica(s) each)"
  timeout "$REDIS_CLUSTER_TIMEOUT" redis-cli "${TLS_CLI[@]}" --cluster create "${PORTS[@]/#/127.0.0.1:}" \
    --cluster-replicas "$REDIS_CLUSTER_REPLICAS" --cluster-yes >"$REDIS_CLUSTER_DIR/create.log" 2>&1 ||
    { cat "$REDIS_CLUSTER_DIR/create.log" >&2; die "redis-cli --cluster create failed"; }
  wait_cluster_ok || { rcli "${PORTS[0]}" cluster info >&2 || true; die "cluster_state:ok not reached within ${REDIS_CLUSTER_TIMEOUT}s"; }
  if (( REDIS_CLUSTER_REPLICAS > 0 )); then
    wait_replicas_synced || { rcli "${PORTS[0]}" cluster nodes >&2 || true; die "replicas not in sync within ${REDIS_CLUSTER_TIMEOUT}s"; }
  fi
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
    cli)    shift; ensure_redis; exec redis-cli -c -h 127.0.0.1 -p "${PORTS[0]}" "${TLS_CLI[@]}" "$@" ;;
    kill-node)  shift; cmd_kill_node "$@" ;;
    start-node) shift; cmd_start_node "$@" ;;
    pid)    shift; known_port "${1:?pid needs a PORT}"; read_pid "$1" && echo ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) log "unknown command: $cmd"; usage >&2; exit 2 ;;
  esac
}

main "$@"
