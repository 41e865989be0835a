#!/usr/bin/env bash
# A seeded fault schedule over the whole of kbridge, on a real Kafka broker and
# a real redis-server of its own, with a ledger and a checker.
set -euo pipefail

LOG_NAME=chaos.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=scripts/_lib.sh
source "$SCRIPT_DIR/_lib.sh"

usage() {
  cat <<'EOF'
Usage: scripts/chaos.sh --seed N [--duration D] [options] [-- harness flags]

Starts a Kafka broker (KRaft, scripts/kafka.sh) and a redis-server
(scripts/redis.sh) of its own, a loopback proxy in front of each, 3 `kbridge
ingest` and 3 `kbridge worker --http` processes, a producer and a handler that
records every delivery. Then it applies a seeded random schedule of faults:

  ingest-kill ingest-stop ingest-term   SIGKILL / SIGSTOP+SIGCONT / SIGTERM of an ingest
  worker-kill worker-stop worker-term   the same for a worker
  redis-empty redis-saved redis-old     Redis restarted empty / after SHUTDOWN SAVE /
                                        on a snapshot taken seconds before a crash
  kafka-term kafka-kill                 the broker stopped cleanly / SIGKILLed, then started
  kafka-cut redis-cut                   every connection of kbridge reset mid-stream
  kafka-down redis-down                 connections refused for a while
  kafka-freeze redis-freeze             every byte held for a while (a partition)

Then it heals everything, stops the producer, waits until every partition's
commit reaches its log end, SIGTERMs every process, and checks: lost records
(must be 0), duplicates and their cause, commits never backwards, never past
an offset no worker handled, never beyond the log end, final commit = log end.
The table goes into docs/reliability.md (the section of the same seed, duration
and profile is replaced). Exit status: 0 if every check passed, 1 if not.

Options:
  --seed N          seed of the schedule (the same seed, the same faults) [1]
  --duration D      length of the schedule, Go syntax (90s, 5m) [60s]
  --faults N        number of faults [one per 3 s]
  --kinds LIST      comma-separated fault kinds, or all, or quick (all but the
                    Kafka restarts) [all]
  --profile P       defaults (the flags' defaults), fast (short session and
                    visibility timeouts) or proposed (the defaults proposed in
                    docs/reliability.md) [defaults]
  --isolate         instead of a schedule: each kind alone, --reps times, each
                    after the previous one recovered, after "none" (no fault: the
                    pipeline's own latency): recovery time per fault type
  --reps N          with --isolate [3]
  --quick           the CI seed (TestQuickSeed): 20 faults in 60 s, --kinds quick,
                    --profile fast, 4 partitions, 2 ingests, 2 workers, 300/s
  --no-doc          do not write docs/reliability.md
  -h, --help        this help
  --                the rest goes to the harness (internal/chaos/cmd/chaos -h):
                    --partitions --ingests --workers --rate --delay --max-hold
                    --ingest-flags --worker-flags --drain-within -v ...

Ports: free ones below the kernel's ephemeral range (32768-60999), where no
outgoing connection of another program can take one between the check and the
bind; CHAOS_PORT_BASE=N fixes them instead: Kafka N+92..N+95 (listener,
controller, proxied listener, proxy), Redis N+379 and its proxy N+380, the
handler N+80.
Run directory (logs of every process, report.json, evidence/ per fault):
CHAOS_DIR [a new directory under ${TMPDIR:-/tmp}], kept at the end.

Examples:
  scripts/chaos.sh --seed 7
  scripts/chaos.sh --seed 7 --duration 5m -- --partitions 16 --rate 2000
  scripts/chaos.sh --isolate --kinds ingest-kill,worker-kill,redis-empty
  scripts/chaos.sh --quick --seed 3
EOF
}

seed=1 duration=60s faults="" kinds=all profile=defaults mode=schedule reps=3 doc=1 quick=0
extra=()
cmdline="scripts/chaos.sh $*"
while (( $# )); do
  case $1 in
    --seed) seed=${2:?--seed needs a value}; shift 2 ;;
    --duration) duration=${2:?--duration needs a value}; shift 2 ;;
    --faults) faults=${2:?--faults needs a value}; shift 2 ;;
    --kinds) kinds=${2:?--kinds needs a value}; shift 2 ;;
    --profile) profile=${2:?--profile needs a value}; shift 2 ;;
    --isolate) mode=isolate; shift ;;
    --reps) reps=${2:?--reps needs a value}; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-doc) doc=0; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    *) log "unknown option: $1"; usage >&2; exit 2 ;;
  esac
done
[[ $seed =~ ^[0-9]+$ ]] || { log "--seed $seed: want a non-negative integer"; exit 2; }

args=(--seed "$seed" --duration "$duration" --kinds "$kinds" --profile "$profile" --mode "$mode" --reps "$reps")
if (( quick )); then
  args=(--seed "$seed" --duration 60s --profile fast --partitions 4 --ingests 2 --workers 2 --rate 300
    --kinds "$( [[ $kinds == all ]] && echo quick || echo "$kinds")" --faults 20 --max-hold 5s)
fi
[[ -n $faults ]] && args+=(--faults "$faults")

ensure_cmds redis-server:redis-server redis-cli:redis-tools
bash "$SCRIPT_DIR/kafka.sh" libs >/dev/null

base=${CHAOS_PORT_BASE:-0}
dir=${CHAOS_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/kbridge-chaos-XXXXXX")}
mkdir -p "$dir/bin"
log "building kbridge and the harness into $dir/bin"
(cd "$ROOT" && go build -o "$dir/bin/kbridge" ./cmd/kbridge && go build -o "$dir/bin/chaos" ./internal/chaos/cmd/chaos)

(( doc )) && args+=(--doc "$ROOT/docs/reliability.md")
log "run directory $dir$( (( base )) && echo " (ports from $base)")"
# revision: the commit under test, "-dirty" when files differ from it (but
# docs/reliability.md, which the runs themselves write).
revision() {
  cd "$ROOT" || return
  local rev
  rev=$(git rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
  git diff --quiet HEAD -- . ':(exclude)docs/reliability.md' 2>/dev/null || rev+=-dirty
  echo "$rev"
}

# The harness stops everything it started (processes, Kafka, Redis) when it
# ends or gets SIGINT/SIGTERM: pass the signal on and wait for it.
"$dir/bin/chaos" --bin "$dir/bin/kbridge" --scripts "$SCRIPT_DIR" --dir "$dir" --port-base "$base" \
  --command "${cmdline% }" --revision "$(revision)" \
  "${args[@]}" "${extra[@]}" &
harness=$!
trap 'kill -TERM "$harness" 2>/dev/null || true' INT TERM
rc=0
while :; do
  wait "$harness" && rc=0 || rc=$?
  # wait returns >128 when a trapped signal interrupted it: wait again
  pid_alive "$harness" || break
done
log "run directory kept: $dir"
exit $rc
