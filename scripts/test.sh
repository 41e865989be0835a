#!/usr/bin/env bash
# The one test command of kbridge: go vet + go test -race against real Kafka and Redis
# (and, beside it, the worker's scheduler simulations without -race).
set -euo pipefail

LOG_NAME=test.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=scripts/_lib.sh
source "$SCRIPT_DIR/_lib.sh"

usage() {
  cat <<EOF
Usage: scripts/test.sh [--no-services] [GO TEST ARGS...]

Runs the whole kbridge test suite:
  1. installs what is missing (redis-server, Java/Maven, Kafka jars, gcc for -race)
  2. starts a real Kafka (127.0.0.1:$KAFKA_TEST_PORT, fresh data), a real Redis
     (127.0.0.1:$REDIS_TEST_PORT, no persistence) and a 3-master Redis Cluster
     (127.0.0.1:17000-17002, scripts/redis-cluster.sh) unless they already run
  3. exports KAFKA_BROKERS, REDIS_ADDR, REDIS_CLUSTER_ADDRS and KBRIDGE_SCRIPTS
     (this scripts/ dir, so tests can start extra brokers/redis with
     scripts/kafka.sh and scripts/redis.sh)
  4. go vet ./...
  5. go test -race -count=1 -timeout 40m ./... GO TEST ARGS...
     and beside it, when ./worker is among the packages, the worker's
     simulations without -race (they skip under -race: one goroutine on a
     simulated clock, nothing for the detector to find; worker/sim_test.go):
     KBRIDGE_SIM_ONLY=1 go test -count=1 -timeout 40m -race=false ./worker/ GO TEST ARGS...
     (its output is printed when it ends)
  6. stops every service it (or a test, through the scripts) started; exits with
     go test's exit code (the -race pass's if it failed, else the simulations').

Options:
  --no-services   no Kafka/Redis: tests run on the embedded stand-ins only
                  (KAFKA_BROKERS, REDIS_ADDR and KBRIDGE_SCRIPTS are unset)
  -h, --help      this help
  --              everything after it goes to go test unchanged

Examples:
  scripts/test.sh
  scripts/test.sh -run TestBridge ./bridge/...
  scripts/test.sh --no-services -v

Environment: KBRIDGE_TEST_KAFKA_PORT [19092], KBRIDGE_TEST_REDIS_PORT [16379],
KBRIDGE_TEST_TIMEOUT (go test -timeout) [40m]; see scripts/kafka.sh --help and
scripts/redis.sh --help for the rest.
EOF
}

KAFKA_TEST_PORT=${KBRIDGE_TEST_KAFKA_PORT:-19092}
REDIS_TEST_PORT=${KBRIDGE_TEST_REDIS_PORT:-16379}
TEST_TIMEOUT=${KBRIDGE_TEST_TIMEOUT:-40m}

services=1
go_args=()
while (( $# )); do
  case $1 in
    --no-services) services=0; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; go_args+=("$@"); break ;;
    *) go_args+=("$1"); shift ;;
  esac
done

T0=$SECONDS
cd "$ROOT"

KAFKA_TEST_DIR=${TMPDIR:-/tmp}/kbridge-kafka-$KAFKA_TEST_PORT
REDIS_TEST_DIR=${TMPDIR:-/tmp}/kbridge-redis-$REDIS_TEST_PORT
KAFKA_ENV=(KAFKA_PORT="$KAFKA_TEST_PORT" KAFKA_CONTROLLER_PORT="$((KAFKA_TEST_PORT + 1))"
  KAFKA_DATA_DIR="$KAFKA_TEST_DIR")
REDIS_ENV=(REDIS_PORT="$REDIS_TEST_PORT" REDIS_PERSIST=none REDIS_DATA_DIR="$REDIS_TEST_DIR")

REGISTRY=""
GO_PID=""
SIM_PID=""
SIM_LOG=""
KEEP_DIRS=()   # data dirs of services that ran before us: never stopped by us
CLUSTER_STARTED=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
finish() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  local pid
  for pid in "$GO_PID" "$SIM_PID"; do
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
      log "interrupted: stopping go test (process group $pid)"
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
      wait_pid_gone "$pid" 10 || kill -KILL -- "-$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
    fi
  done
  if [[ -n $SIM_LOG && -f $SIM_LOG ]]; then
    log "output of the simulations' pass so far:"
    tail -n 50 "$SIM_LOG" >&2
    rm -f "$SIM_LOG"
  fi
  if [[ -n $REGISTRY && -f $REGISTRY ]]; then
    local kind dir port keep k
    # stop newest first: extra instances started by tests, then ours
    while IFS=$'\t' read -r kind dir port; do
      [[ -n $kind ]] || continue
      keep=0
      for k in "${KEEP_DIRS[@]}"; do [[ $k == "$dir" ]] && keep=1; done
      (( keep )) && continue
      case $kind in
        kafka) KAFKA_PORT=$port KAFKA_DATA_DIR=$dir bash "$SCRIPT_DIR/kafka.sh" status >/dev/null 2>&1 &&
                 KAFKA_PORT=$port KAFKA_DATA_DIR=$dir bash "$SCRIPT_DIR/kafka.sh" stop ;;
        redis) REDIS_PORT=$port REDIS_DATA_DIR=$dir bash "$SCRIPT_DIR/redis.sh" status >/dev/null 2>&1 &&
                 REDIS_PORT=$port REDIS_DATA_DIR=$dir bash "$SCRIPT_DIR/redis.sh" stop ;;
      esac
    done < <(tac "$REGISTRY" | awk -F'\t' '!seen[$2]++')
    rm -f "$REGISTRY"
  fi
  (( CLUSTER_STARTED )) && bash "$SCRIPT_DIR/redis-cluster.sh" stop >/dev/null 2>&1
  if (( rc == 0 )); then
    log "PASS — whole run took $(human_duration $((SECONDS - T0)))"
  else
    log "FAIL (exit $rc) — whole run took $(human_duration $((SECONDS - T0)))"
    if [[ -n $REGISTRY ]]; then
      log "service logs: $KAFKA_TEST_DIR/kafka.log, $REDIS_TEST_DIR/redis.log"
    fi
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "==== kbridge tests ===="
log "repo:     $ROOT"
command -v go >/dev/null || die "go is not installed (need the Go toolchain named in go.mod)"
log "go:       $(go version | awk '{print $3, $4}')"
if (( services )); then
  log "services: real Kafka on 127.0.0.1:$KAFKA_TEST_PORT + real Redis on 127.0.0.1:$REDIS_TEST_PORT"
else
  log "services: none (--no-services: embedded stand-ins only)"
fi
# Packages named in the arguments replace the default ./...
pkgs=(./...)
named=()      # the packages named in the arguments
sim_args=()   # the other arguments: for the simulations' pass
value=0       # the argument is the value of the flag before it (-coverprofile ./c.out)
passthru=0    # after -args: for the test binary, never packages
for a in "${go_args[@]}"; do
  if (( value || passthru )); then
    sim_args+=("$a"); value=0; continue
  fi
  case "$a" in
    -args|--args) sim_args+=("$a"); passthru=1 ;;
    -*)
      f=${a#-}; f=${f#-}; f=${f#test.}
      case "$f" in
        race|race=*) ;;   # the simulations' pass is the one without it
        *=*) sim_args+=("$a") ;;
        run|skip|bench|benchtime|count|cpu|list|parallel|timeout|shuffle|fuzz|fuzztime|fuzzminimizetime|coverpkg|covermode|coverprofile|cpuprofile|memprofile|memprofilerate|blockprofile|blockprofilerate|mutexprofile|mutexprofilefraction|outputdir|trace|exec|o|p|tags|ldflags|gcflags|asmflags|mod|modfile|overlay|pkgdir|toolexec|vet|C|pgo)
          sim_args+=("$a"); value=1 ;;
        *) sim_args+=("$a") ;;
      esac ;;
    ./*|../*|github.com/*) pkgs=(); named+=("$a") ;;
    *) sim_args+=("$a") ;;
  esac
done
log "runs:     go vet ./...  then  go test -race -count=1 -timeout $TEST_TIMEOUT ${pkgs[*]} ${go_args[*]}"
log "          and beside it, if ./worker is tested: KBRIDGE_SIM_ONLY=1 go test -count=1 -race=false ./worker/ ${sim_args[*]}"

# No Go code yet: nothing to vet or test.
if [[ -z $(find . -name '*.go' -not -path './vendor/*' -not -path './.git/*' -print -quit) ]]; then
  log "no Go packages in $ROOT yet; nothing to vet or test"
  exit 0
fi

# -race needs cgo, i.e. a C compiler and libc headers.
missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
if (( services )); then
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
fi
(( ${#missing[@]} )) && apt_install "${missing[@]}"
# The Python worker of examples/python runs through the conformance kit
# (internal/conformance) and needs redis-py.
if (( services )); then
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip
  if ! python3 -c 'import redis' 2>/dev/null; then
    log "installing redis-py for examples/python (pip install -r examples/python/requirements.txt)"
    python3 -m pip install --quiet -r examples/python/requirements.txt 2>/dev/null ||
      python3 -m pip install --quiet --break-system-packages -r examples/python/requirements.txt ||
      die "cannot install redis-py (examples/python/requirements.txt)"
  fi
fi

log "go vet ./..."
go vet ./... || die "go vet failed"

if (( services )); then
  # Serialize concurrent runs on one machine: they would share (and stop) the
  # same broker and Redis.
  exec 8>"${TMPDIR:-/tmp}/kbridge-test.lock"
  if ! flock -n 8; then
    log "another scripts/test.sh run holds ${TMPDIR:-/tmp}/kbridge-test.lock; waiting for it"
    flock -w 3600 8 || die "gave up waiting for the other test run"
  fi

  REGISTRY=$(mktemp "${TMPDIR:-/tmp}/kbridge-test-registry.XXXXXX")
  export KBRIDGE_REGISTRY=$REGISTRY

  ts=$SECONDS
  if env "${KAFKA_ENV[@]}" bash "$SCRIPT_DIR/kafka.sh" status >/dev/null 2>&1; then
    log "Kafka already running on 127.0.0.1:$KAFKA_TEST_PORT: reusing it (not fresh, left running)"
    KEEP_DIRS+=("$KAFKA_TEST_DIR")
    env "${KAFKA_ENV[@]}" bash "$SCRIPT_DIR/kafka.sh" wait >/dev/null
  elif port_open "$KAFKA_TEST_PORT"; then
    log "port $KAFKA_TEST_PORT is taken by a broker we do not manage: reusing it (left running)"
    env "${KAFKA_ENV[@]}" bash "$SCRIPT_DIR/kafka.sh" wait >/dev/null
  else
    env "${KAFKA_ENV[@]}" KAFKA_FRESH=1 bash "$SCRIPT_DIR/kafka.sh" start
  fi
  if env "${REDIS_ENV[@]}" bash "$SCRIPT_DIR/redis.sh" status >/dev/null 2>&1; then
    log "Redis already running on 127.0.0.1:$REDIS_TEST_PORT: reusing it (left running)"
    KEEP_DIRS+=("$REDIS_TEST_DIR")
  elif port_open "$REDIS_TEST_PORT"; then
    log "port $REDIS_TEST_PORT is taken by a Redis we do not manage: reusing it (left running)"
    [[ $(timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_TEST_PORT" ping 2>/dev/null) == PONG ]] ||
      die "127.0.0.1:$REDIS_TEST_PORT does not answer PING"
  else
    env "${REDIS_ENV[@]}" bash "$SCRIPT_DIR/redis.sh" start
  fi
  # A 3-master Redis Cluster for TestRedisCluster (ports 17000-17002).
  if bash "$SCRIPT_DIR/redis-cluster.sh" status >/dev/null 2>&1; then
    log "Redis Cluster already running: reusing it (left running)"
  else
    bash "$SCRIPT_DIR/redis-cluster.sh" start
    CLUSTER_STARTED=1
  fi
  log "services ready in $(human_duration $((SECONDS - ts)))"

  export KAFKA_BROKERS=127.0.0.1:$KAFKA_TEST_PORT
  export REDIS_ADDR=127.0.0.1:$REDIS_TEST_PORT
  export KBRIDGE_SCRIPTS=$SCRIPT_DIR
  export REDIS_CLUSTER_ADDRS=127.0.0.1:17000,127.0.0.1:17001,127.0.0.1:17002
  log "KAFKA_BROKERS=$KAFKA_BROKERS REDIS_ADDR=$REDIS_ADDR REDIS_CLUSTER_ADDRS=$REDIS_CLUSTER_ADDRS KBRIDGE_SCRIPTS=$KBRIDGE_SCRIPTS"
else
  unset KAFKA_BROKERS REDIS_ADDR REDIS_CLUSTER_ADDRS KBRIDGE_SCRIPTS KBRIDGE_REGISTRY
fi

# The worker's scheduler simulations skip under -race (simTest,
# worker/sim_test.go): they run here without it, beside the -race pass, when
# the worker package is tested. KBRIDGE_SIM_ONLY=1 skips every other test of
# the package (those run under -race); which is which comes from the source,
# so the two passes cannot drift apart. It runs niced: the -race pass has
# the tests that watch the real clock, the simulations only a simulated one.
# Left out only when go list says the packages named do not include the
# worker: a list it cannot read runs the simulations (fail safe).
sims=1
if (( ${#named[@]} )) && worker_pkg=$(go list ./worker 2>/dev/null) &&
   listed=$(go list "${named[@]}" 2>/dev/null) && ! grep -qxF "$worker_pkg" <<<"$listed"; then
  sims=0
fi
set +e
if (( sims )); then
  SIM_LOG=$(mktemp "${TMPDIR:-/tmp}/kbridge-test-sims.XXXXXX")
  log "KBRIDGE_SIM_ONLY=1 go test -count=1 -timeout $TEST_TIMEOUT -race=false ./worker/ ${sim_args[*]} (beside it; output when it ends)"
  setsid nice -n 10 env KBRIDGE_SIM_ONLY=1 go test -count=1 -timeout "$TEST_TIMEOUT" -race=false ./worker/ "${sim_args[@]}" \
    </dev/null >"$SIM_LOG" 2>&1 &
  SIM_PID=$!
fi
log "go test -race -count=1 -timeout $TEST_TIMEOUT ${pkgs[*]} ${go_args[*]}"
# go test runs in its own process group and we `wait` for it, so that a signal
# to this script (Ctrl-C, timeout(1), CI) is handled at once: finish() stops
# the test processes and then the services.
ts=$SECONDS
setsid go test -race -count=1 -timeout "$TEST_TIMEOUT" "${pkgs[@]}" "${go_args[@]}" </dev/null &
GO_PID=$!
wait "$GO_PID"
rc=$?
GO_PID=""
log "go test -race: $( ((rc == 0)) && echo PASS || echo "FAIL (exit $rc)") in $(human_duration $((SECONDS - ts)))"
if (( sims )); then
  wait "$SIM_PID"
  sim_rc=$?
  SIM_PID=""
  log "---- simulations without -race (KBRIDGE_SIM_ONLY=1 go test ./worker/) ----"
  cat "$SIM_LOG"
  rm -f "$SIM_LOG"
  SIM_LOG=""
  log "simulations without -race: $( ((sim_rc == 0)) && echo PASS || echo "FAIL (exit $sim_rc)") (done $(human_duration $((SECONDS - ts))) after the start)"
  (( rc == 0 )) && rc=$sim_rc
fi
set -e
exit "$rc"
