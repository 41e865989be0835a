#!/usr/bin/env bash
# The benchmarks of kbridge (issues 10 and 8) on a real Kafka broker and a real
# redis-server that it starts itself on its own loopback ports. Writes
# docs/benchmarks.md, docs/benchmarks.json (the figures), docs/img/*.png (the
# charts) and docs/profiles/ (CPU profiles behind missed targets).
set -euo pipefail
LOG_NAME=bench.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=scripts/_lib.sh
source "$here/_lib.sh"

usage() {
  cat <<'USAGE'
Usage: scripts/bench.sh [--quick] [--only IDS] [--go | --no-go] [--rounds N] [--keep-services]

Runs every benchmark against a real Apache Kafka broker and a real redis-server
(started here, own ports, stopped at the end), then rewrites docs/benchmarks.md
and the charts in docs/img/. Every figure is a ratio or a paired measurement of
one run, the sides interleaved and repeated (median and spread).

  10a  ceiling: raw kafka-go fetch, raw pipelined XADD, kbridge ingest (100 B, 1 KB)
  10b  end to end, no-op handlers: records/s, CPU µs/record/process, Redis cmds/record
  10c  backlog of 1,000,000 records, cap 10,000: length, memory, RSS, drain (chart)
  10d  1,000 partitions: idle CPU of ingest and Redis; RSS under a backlog everywhere
  10e  a second ingest joining under load: throughput ratio, duplicates (chart)
  10f  commit lag p50/p99
  8-i  hot partition: 1,000-partition topic vs 1-partition topic
  8-ii 1 ms partition beside a 500 ms / a failing one, vs alone
  8-iii reclaim of a SIGKILLed worker's entries while the others are saturated
  8-iv Little's-law efficiency at N = 32, 128, 512 vs a goroutine pool (chart)
  go   go test -bench of the tracker, the codec and the append path

Options:
  --quick          smaller sizes and 2 rounds (a smoke run; the report says so)
  --only IDS       comma-separated ids (e.g. 10a,8-iv); the others keep their
                   last figures in docs/benchmarks.json
  --go             only the Go benchmarks      --no-go   skip them
  --rounds N       repetitions of each paired measurement (default 3, quick 2)
  --keep-services  leave Kafka and Redis running at the end
  -h, --help       this help

Environment: BENCH_KAFKA_PORT [37092] (controller: +1), BENCH_REDIS_PORT [37379],
BENCH_DIR (logs) [a new temporary directory].
Needs Go; installs redis-server, Java and Maven (for Kafka's jars) when missing.
A full run takes about 25 minutes on a 2-core machine; --quick about 8.
USAGE
}

quick=0 only="" gobench=1 rest=1 rounds="" keep=0
args_text="scripts/bench.sh${*:+ $*}"
while (( $# )); do
  case $1 in
    --quick) quick=1 ;;
    --only) only=${2:?--only needs ids}; shift ;;
    --only=*) only=${1#*=} ;;
    --go) rest=0 ;;
    --no-go) gobench=0 ;;
    --rounds) rounds=${2:?--rounds needs a number}; shift ;;
    --keep-services) keep=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
if [[ -n $only ]]; then
  # "go" in --only selects the Go benchmarks.
  if [[ ,$only, == *,go,* ]]; then
    only=$(tr ',' '\n' <<<"$only" | grep -vx go | paste -sd, -)
    [[ -z $only ]] && rest=0
  else
    gobench=0
  fi
fi

T0=$SECONDS
KAFKA_PORT=${BENCH_KAFKA_PORT:-37092}
REDIS_PORT=${BENCH_REDIS_PORT:-37379}
kafka_env=(KAFKA_PORT="$KAFKA_PORT" KAFKA_CONTROLLER_PORT="$((KAFKA_PORT + 1))"
  KAFKA_DATA_DIR="${TMPDIR:-/tmp}/kbench-kafka-$KAFKA_PORT")
redis_env=(REDIS_PORT="$REDIS_PORT" REDIS_PERSIST=none REDIS_DATA_DIR="${TMPDIR:-/tmp}/kbench-redis-$REDIS_PORT")
command -v go >/dev/null || die "go is not installed (need the Go toolchain named in go.mod)"
ensure_cmds redis-server:redis-server redis-cli:redis-tools java:openjdk-17-jre-headless mvn:maven

started=()
cleanup() {
  local rc=$?
  set +e
  if (( ! keep )); then
    for s in "${started[@]}"; do
      case $s in
        kafka) env "${kafka_env[@]}" bash "$here/kafka.sh" stop >/dev/null 2>&1 ;;
        redis) env "${redis_env[@]}" bash "$here/redis.sh" stop >/dev/null 2>&1 ;;
      esac
    done
  fi
  log "whole run took $(human_duration $((SECONDS - T0)))"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bin=$(mktemp -d "${TMPDIR:-/tmp}/kbench-bin.XXXXXX")
log "building kbridge and kbench"
(cd "$root" && go build -o "$bin/kbridge" ./cmd/kbridge && go build -o "$bin/kbench" ./internal/bench/kbench)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null) ]]; then commit="$commit+dirty"; fi

if (( rest )); then
  if env "${kafka_env[@]}" bash "$here/kafka.sh" status >/dev/null 2>&1; then
    log "Kafka already running on 127.0.0.1:$KAFKA_PORT: reusing it"
  else
    env "${kafka_env[@]}" KAFKA_FRESH=1 bash "$here/kafka.sh" start
    started+=(kafka)
  fi
fi
if env "${redis_env[@]}" bash "$here/redis.sh" status >/dev/null 2>&1; then
  log "Redis already running on 127.0.0.1:$REDIS_PORT: reusing it"
else
  env "${redis_env[@]}" bash "$here/redis.sh" start
  started+=(redis)
fi
redis_pid=$(cat "${TMPDIR:-/tmp}/kbench-redis-$REDIS_PORT/redis.pid")
kafka_version=$(env "${kafka_env[@]}" bash -c 'echo ${KAFKA_VERSION:-4.1.2}')

cd "$root"
mkdir -p docs/img docs/profiles
rc=0
if (( gobench )); then
  log "Go benchmarks: tracker, codec (in-process) and the append path (Redis on $REDIS_PORT)"
  out=$bin/gobench.txt
  {
    go test -run XXX -bench . -benchmem -count 3 ./tracker/ ./internal/wire/
    REDIS_ADDR=127.0.0.1:$REDIS_PORT go test -run XXX -bench . -benchmem -benchtime 100000x -count 3 ./bridge/
  } 2>&1 | grep -E '^(Benchmark|goos|goarch|pkg|cpu|ok|FAIL|---)' | tee "$out" || rc=1
  "$bin/kbench" report --results docs/benchmarks.json --out docs/benchmarks.md --gobench "$out"
fi
if (( rest )); then
  run_args=(--brokers "127.0.0.1:$KAFKA_PORT" --redis "127.0.0.1:$REDIS_PORT" --redis-pid "$redis_pid"
    --kbridge "$bin/kbridge" --results docs/benchmarks.json --profiles docs/profiles
    --command "$args_text" --kafka-version "$kafka_version" --commit "$commit")
  (( quick )) && run_args+=(--quick)
  [[ -n $only ]] && run_args+=(--only "$only")
  [[ -n $rounds ]] && run_args+=(--rounds "$rounds")
  [[ -n ${BENCH_DIR:-} ]] && run_args+=(--dir "$BENCH_DIR")
  "$bin/kbench" run "${run_args[@]}" || rc=$?
fi
"$bin/kbench" report --results docs/benchmarks.json --out docs/benchmarks.md
log "drawing the charts (internal/bench/chart, a module of its own)"
(cd internal/bench/chart && go run . -results "$root/docs/benchmarks.json" -out "$root/docs/img") || rc=1
rm -rf "$bin"
log "wrote docs/benchmarks.md, docs/benchmarks.json, docs/img/, docs/profiles/"
exit "$rc"
