#!/usr/bin/env bash
# Real Redis (Debian's redis-server) on 127.0.0.1 for tests.
set -euo pipefail

LOG_NAME=redis.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/_lib.sh
source "$SCRIPT_DIR/_lib.sh"

usage() {
  cat <<EOF
Usage: scripts/redis.sh start|stop|status|restart|cli [ARGS...]

Runs Debian's redis-server (installed with apt-get when missing) on 127.0.0.1,
daemonized, with maxmemory-policy noeviction.

Commands:
  start    start and wait for PING -> PONG; prints "redis ready on 127.0.0.1:PORT".
           Already running -> exit 0.
  stop     SHUTDOWN NOSAVE (REDIS_PERSIST=none) or SHUTDOWN (rdb/aof, so the next
           start loads the data from disk); falls back to SIGTERM/SIGKILL.
           Stopped -> exit 0.
  status   print "running ..." (exit 0) or "stopped" (exit 3).
  restart  stop, then start.
  cli      run redis-cli against this instance, e.g. scripts/redis.sh cli dbsize

Environment (defaults in brackets):
  REDIS_PORT          port [16379]
  REDIS_PERSIST       none | rdb | aof [none]
                        none: --save '' --appendonly no
                        rdb:  --save '60 1' --appendonly no (+ snapshot on shutdown)
                        aof:  --appendonly yes --appendfsync \$REDIS_APPENDFSYNC --save ''
  REDIS_APPENDFSYNC   always | everysec | no, for aof [everysec]
  REDIS_DATA_DIR      dir for pid, log and data files [\${TMPDIR:-/tmp}/kbridge-redis-\$REDIS_PORT]
  REDIS_FRESH=1       on start: wipe REDIS_DATA_DIR first (a running instance is stopped)
  REDIS_MAXMEMORY     maxmemory (0 = unlimited) [0]
  REDIS_EXTRA_ARGS    extra redis-server arguments (word-split)
  REDIS_START_TIMEOUT seconds to wait for PONG [30]
  REDIS_STOP_TIMEOUT  seconds to wait for exit before SIGKILL [30]

Security (off by default):
  REDIS_TLS=1             serve TLS only, on REDIS_PORT (no plain port), with the
                          certificates of REDIS_TLS_DIR
  REDIS_TLS_DIR           certificates as scripts/certs.sh writes them (ca.crt,
                          server.crt/key; client.crt/key for redis-cli)
                          [\$REDIS_DATA_DIR/tls, made by certs.sh when missing]
  REDIS_TLS_AUTH_CLIENTS  tls-auth-clients: yes (a client certificate signed by the
                          CA is required), optional or no [no]
  REDIS_PASSWORD          requirepass of the default user, written to a config
                          file (never on the command line); redis-cli here reads
                          it from REDISCLI_AUTH
EOF
}

REDIS_PORT=${REDIS_PORT:-16379}
REDIS_PERSIST=${REDIS_PERSIST:-none}
REDIS_APPENDFSYNC=${REDIS_APPENDFSYNC:-everysec}
REDIS_DATA_DIR=${REDIS_DATA_DIR:-${TMPDIR:-/tmp}/kbridge-redis-$REDIS_PORT}
REDIS_MAXMEMORY=${REDIS_MAXMEMORY:-0}
REDIS_START_TIMEOUT=${REDIS_START_TIMEOUT:-30}
REDIS_STOP_TIMEOUT=${REDIS_STOP_TIMEOUT:-30}
REDIS_TLS=${REDIS_TLS:-0}
REDIS_TLS_DIR=${REDIS_TLS_DIR:-$REDIS_DATA_DIR/tls}
REDIS_TLS_AUTH_CLIENTS=${REDIS_TLS_AUTH_CLIENTS:-no}
REDIS_PASSWORD=${REDIS_PASSWORD:-}
# Absolute paths: redis-server changes its working directory to --dir before
# it reads the certificates, so a relative REDIS_TLS_DIR would point nowhere.
REDIS_DATA_DIR=$(realpath -m -- "$REDIS_DATA_DIR")
REDIS_TLS_DIR=$(realpath -m -- "$REDIS_TLS_DIR")

PID_FILE=$REDIS_DATA_DIR/redis.pid
LOG_FILE=$REDIS_DATA_DIR/redis.log
ADDR=127.0.0.1:$REDIS_PORT

case $REDIS_PERSIST in
  none) PERSIST_ARGS=(--save '' --appendonly no) ;;
  rdb)  PERSIST_ARGS=(--save '60 1' --appendonly no --dbfilename dump.rdb) ;;
  aof)  PERSIST_ARGS=(--appendonly yes --appendfsync "$REDIS_APPENDFSYNC" --save '') ;;
  *) die "REDIS_PERSIST must be none, rdb or aof (got '$REDIS_PERSIST')" ;;
esac

ensure_redis() {
  ensure_cmds redis-server:redis-server redis-cli:redis-tools
}

case $REDIS_TLS_AUTH_CLIENTS in yes|optional|no) ;; *) die "REDIS_TLS_AUTH_CLIENTS must be yes, optional or no" ;; esac

# cli_args: how redis-cli reaches this instance. A started instance
# remembers its TLS dir (tls-dir) and password (secrets.conf) in its data dir,
# so stop/status/cli work without the start's environment (scripts/test.sh
# stops what tests started knowing only port and data dir).
cli_args() {
  CLI=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
  local tls_dir=""
  if [[ $REDIS_TLS == 1 ]]; then
    tls_dir=$REDIS_TLS_DIR
  elif [[ -s $REDIS_DATA_DIR/tls-dir ]]; then
    tls_dir=$(<"$REDIS_DATA_DIR/tls-dir")
  fi
  if [[ -n $tls_dir ]]; then
    CLI+=(--tls --cacert "$tls_dir/ca.crt" --cert "$tls_dir/client.crt" --key "$tls_dir/client.key")
  fi
  # The password reaches redis-cli through its environment, not argv (an
  # empty REDISCLI_AUTH would send AUTH "": only set when there is one).
  local pw=$REDIS_PASSWORD
  if [[ -z $pw && -s $REDIS_DATA_DIR/secrets.conf ]]; then
    pw=$(awk '$1 == "requirepass" {print $2}' "$REDIS_DATA_DIR/secrets.conf")
  fi
  if [[ -n $pw ]]; then export REDISCLI_AUTH=$pw; else unset REDISCLI_AUTH; fi
}
cli_args

rcli() { timeout 10 "${CLI[@]}" "$@"; }

read_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid=$(<"$PID_FILE") || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # Guard against pid reuse: must be a redis-server on our port.
  pid_alive "$pid" && pid_cmdline_has "$pid" redis-server && pid_cmdline_has "$pid" ":$REDIS_PORT" || return 1
  printf '%s' "$pid"
}

is_running() { read_pid >/dev/null; }

cmd_start() {
  local pid
  if [[ ${REDIS_FRESH:-0} == 1 ]] && is_running; then
    log "REDIS_FRESH=1: stopping the running redis on $ADDR to wipe its data"
    cmd_stop
  fi
  if pid=$(read_pid); then
    log "already running (pid $pid) on $ADDR"
    wait_pong "$pid" || die "running redis on $ADDR does not answer PING"
    echo "redis ready on $ADDR"
    return 0
  fi
  ensure_redis
  port_open "$REDIS_PORT" && die "port $REDIS_PORT on 127.0.0.1 is already in use by another process (not the redis of $REDIS_DATA_DIR)"
  if [[ ${REDIS_FRESH:-0} == 1 && -d $REDIS_DATA_DIR ]]; then
    log "REDIS_FRESH=1: wiping $REDIS_DATA_DIR"
    rm -rf "$REDIS_DATA_DIR"
  fi
  mkdir -p "$REDIS_DATA_DIR"
  rm -f "$PID_FILE"
  local extra=() conf=()
  # shellcheck disable=SC2206
  [[ -n ${REDIS_EXTRA_ARGS:-} ]] && extra=($REDIS_EXTRA_ARGS)
  local listen=(--port "$REDIS_PORT")
  if [[ $REDIS_TLS == 1 ]]; then
    # certs.sh keeps a valid set, completes or renews it (under a lock)
    bash "$SCRIPT_DIR/certs.sh" "$REDIS_TLS_DIR" >&2
    listen=(--port 0 --tls-port "$REDIS_PORT" --tls-cert-file "$REDIS_TLS_DIR/server.crt"
      --tls-key-file "$REDIS_TLS_DIR/server.key" --tls-ca-cert-file "$REDIS_TLS_DIR/ca.crt"
      --tls-auth-clients "$REDIS_TLS_AUTH_CLIENTS")
  fi
  # Secrets go in a config file of mode 0600, not on the command line (ps).
  if [[ -n $REDIS_PASSWORD ]]; then
    [[ $REDIS_PASSWORD =~ ^[A-Za-z0-9._~-]+$ ]] || die "REDIS_PASSWORD: limited to [A-Za-z0-9._~-] in these test scripts"
    (umask 077; printf 'requirepass %s\n' "$REDIS_PASSWORD" >"$REDIS_DATA_DIR/secrets.conf")
    conf=("$REDIS_DATA_DIR/secrets.conf")
  else
    rm -f "$REDIS_DATA_DIR/secrets.conf"
  fi
  local sec=""
  [[ $REDIS_TLS == 1 ]] && sec+=", TLS only (tls-auth-clients $REDIS_TLS_AUTH_CLIENTS, certificates $REDIS_TLS_DIR)"
  [[ -n $REDIS_PASSWORD ]] && sec+=", requirepass"
  log "starting redis $(redis-server --version | awk '{print $3}' | sed 's/^v=//') on $ADDR (persistence $REDIS_PERSIST, data $REDIS_DATA_DIR$sec)"
  # Started in the background in a session of its own, not daemonized: this
  # way its pid is known at once, and waiting for PONG stops as soon as the
  # process exits (a bad certificate) instead of running into the timeout.
  # fds 8/9 (test.sh / download locks) are closed so the server never holds them.
  rm -f "$REDIS_DATA_DIR/launch.pid"
  # shellcheck disable=SC2016
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' redis-launcher "$REDIS_DATA_DIR/launch.pid" \
    redis-server "${conf[@]}" \
      --bind 127.0.0.1 "${listen[@]}" \
      --daemonize no --pidfile "$PID_FILE" --logfile "$LOG_FILE" --dir "$REDIS_DATA_DIR" \
      --maxmemory "$REDIS_MAXMEMORY" --maxmemory-policy noeviction \
      "${PERSIST_ARGS[@]}" "${extra[@]}" \
    </dev/null >>"$REDIS_DATA_DIR/stdout.log" 2>&1 8>&- 9>&- &
  for _ in $(seq 50); do [[ -s $REDIS_DATA_DIR/launch.pid ]] && break; sleep 0.1; done
  pid=$(<"$REDIS_DATA_DIR/launch.pid") || die "redis-server did not start (no $REDIS_DATA_DIR/launch.pid)"
  # remembered so that stop saves (or not) the way this instance was started,
  # and reaches it over TLS (cli_args)
  echo "$REDIS_PERSIST" >"$REDIS_DATA_DIR/persist-mode"
  if [[ $REDIS_TLS == 1 ]]; then echo "$REDIS_TLS_DIR" >"$REDIS_DATA_DIR/tls-dir"; else rm -f "$REDIS_DATA_DIR/tls-dir"; fi
  cli_args
  register_instance redis "$REDIS_DATA_DIR" "$REDIS_PORT"
  if ! wait_pong "$pid"; then
    tail -n 20 "$LOG_FILE" >&2 2>/dev/null || true
    running "$pid" || die "redis-server (pid $pid) exited during startup: see the log above ($LOG_FILE)"
    kill -TERM "$pid" 2>/dev/null || true
    die "redis on $ADDR did not answer PING within ${REDIS_START_TIMEOUT}s (pid $pid stopped)"
  fi
  log "started (pid $pid, log $LOG_FILE)"
  echo "redis ready on $ADDR"
}

# running PID: the process is there and not a zombie (a child of this
# script that exited stays a zombie until the script ends).
running() {
  pid_alive "$1" && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# wait_pong PID: until the server answers PING, while PID runs
wait_pong() {
  local pid=$1 deadline=$((SECONDS + REDIS_START_TIMEOUT)) out
  while :; do
    running "$pid" || return 1
    # LOADING replies (big rdb/aof) are errors, so this also waits for the load.
    out=$(rcli ping 2>/dev/null || true)
    [[ $out == PONG ]] && return 0
    (( SECONDS >= deadline )) && return 1
    sleep 0.1
  done
}

cmd_stop() {
  local pid
  if ! pid=$(read_pid); then
    log "not running (data dir $REDIS_DATA_DIR)"
    rm -f "$PID_FILE"
    return 0
  fi
  local mode how=(shutdown nosave)
  mode=$(cat "$REDIS_DATA_DIR/persist-mode" 2>/dev/null || echo "$REDIS_PERSIST")
  [[ $mode != none ]] && how=(shutdown)
  log "stopping redis pid $pid on $ADDR (${how[*]})"
  rcli "${how[@]}" >/dev/null 2>&1 || true
  if ! wait_pid_gone "$pid" "$REDIS_STOP_TIMEOUT"; then
    log "still running after SHUTDOWN; sending SIGTERM"
    terminate "$pid" 10
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local pid
  if pid=$(read_pid); then
    echo "running (pid $pid) on $ADDR, persistence $(cat "$REDIS_DATA_DIR/persist-mode" 2>/dev/null || echo '?'), data $REDIS_DATA_DIR"
    return 0
  fi
  echo "stopped"
  return 3
}

main() {
  local cmd=${1:-}
  case $cmd in
    start)   cmd_start ;;
    stop)    cmd_stop ;;
    status)  cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    cli)     shift; ensure_redis; exec "${CLI[@]}" "$@" ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) log "unknown command: $cmd"; usage >&2; exit 2 ;;
  esac
}

main "$@"
