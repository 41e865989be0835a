#!/usr/bin/env bash
# Benchmarks of kbridge on a real Kafka broker and a real redis-server (started
# here on loopback, like scripts/test.sh does). Prints every figure it measures.
set -euo pipefail
LOG_NAME=bench.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=scripts/_lib.sh
source "$here/_lib.sh"

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  cat <<'USAGE'
scripts/bench.sh — measure kbridge on real Kafka and Redis

  1. Go benchmarks (bridge): the conditional append script side by side with a
     plain pipelined XADD of the same entries, and one commit observation.
  2. Ingest throughput: N records (BENCH_RECORDS, default 300000, 256-byte
     values, 8 partitions) produced first, then one `kbridge ingest` with no
     backpressure and no workers: records/s appended and the peak RSS.
  3. Ingest memory under a backlog: the same topic, a new group, cap 5000 per
     partition and no workers: the RSS sampled for 15 s while every partition is
     paused, whatever the Kafka backlog.

Services: KAFKA_PORT (19092) and REDIS_PORT (16379), started if not running and
stopped at the end if started here.
USAGE
  exit 0
fi

KAFKA_PORT=${KAFKA_PORT:-19092}
REDIS_PORT=${REDIS_PORT:-16379}
N=${BENCH_RECORDS:-300000}
export KAFKA_PORT REDIS_PORT
started=()
cleanup() {
  if [[ -n ${ingest_pid:-} ]]; then kill "$ingest_pid" 2>/dev/null || true; fi
  for s in "${started[@]}"; do bash "$here/$s.sh" stop >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
if ! port_open "$KAFKA_PORT"; then bash "$here/kafka.sh" start; started+=(kafka); fi
if ! port_open "$REDIS_PORT"; then bash "$here/redis.sh" start; started+=(redis); fi
brokers=127.0.0.1:$KAFKA_PORT
redis_url=redis://127.0.0.1:$REDIS_PORT/0
bin=$(mktemp -d)/kbridge
(cd "$root" && go build -o "$bin" ./cmd/kbridge)
log "machine: $(nproc) cores, $(go version | awk '{print $3}'), redis $(redis-server --version | awk '{print $3}')"

log "1. Go benchmarks (bridge, real Redis on $REDIS_PORT)"
(cd "$root" && REDIS_ADDR=127.0.0.1:$REDIS_PORT go test -run XXX -bench 'BenchmarkAppend|BenchmarkObserve' \
  -benchtime 200000x -count 3 ./bridge/ | grep -E '^Benchmark')

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
appended() { # sum over the status hashes of the prefix: top+1
  local sum=0 k top
  for k in $(redis-cli -p "$REDIS_PORT" --scan --pattern "$1:{*}:status"); do
    top=$(redis-cli -p "$REDIS_PORT" hget "$k" top)
    sum=$((sum + top + 1))
  done
  echo "$sum"
}

topic=bench-$(date +%s)
log "2. ingest throughput: producing $N records of 256 bytes to $topic (8 partitions)"
t0=$(date +%s.%N)
"$bin" produce --brokers "$brokers" --topic "$topic" --partitions 8 --count "$N" --rate 0 --size 256 --batch 1000 -q
t1=$(date +%s.%N)
log "produced $N records in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"

"$bin" --redis-url "$redis_url" --prefix "b1-$topic" --log-level warn ingest --brokers "$brokers" --topics "$topic" \
  --group "b1-$topic" --partition-cap 100000000 &
ingest_pid=$!
t0=$(date +%s.%N); peak=0
while :; do
  peak=$(( $(rss_kb $ingest_pid) > peak ? $(rss_kb $ingest_pid) : peak ))
  n=$(appended "b1-$topic")
  (( n >= N )) && break
  sleep 0.5
done
t1=$(date +%s.%N)
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
log "ingest: $N records appended in $secs s = $(awk -v n="$N" -v s="$secs" 'BEGIN{printf "%.0f", n/s}') records/s (includes group join; status read every 0.5 s); peak RSS $((peak / 1024)) MiB"
kill -TERM $ingest_pid; wait $ingest_pid || true; ingest_pid=

log "3. ingest memory with a backlog of $N records, cap 5000 per partition, no workers"
"$bin" --redis-url "$redis_url" --prefix "b2-$topic" --log-level warn ingest --brokers "$brokers" --topics "$topic" \
  --group "b2-$topic" --partition-cap 5000 &
ingest_pid=$!
while (( $(appended "b2-$topic") < 40000 )); do sleep 0.5; done
samples=()
for _ in $(seq 15); do samples+=("$(( $(rss_kb $ingest_pid) / 1024 ))"); sleep 1; done
log "paused at $(appended "b2-$topic") records in Redis (8 x 5000); RSS over 15 s (MiB): ${samples[*]}"
kill -TERM $ingest_pid; wait $ingest_pid || true; ingest_pid=
redis-cli -p "$REDIS_PORT" --scan --pattern "b[12]-$topic*" | xargs -r redis-cli -p "$REDIS_PORT" del >/dev/null
log "done"
