#!/bin/sh
# A kbridge worker in POSIX sh with redis-cli 7 (docs/wire.md, "A worker in shell"). One record at a
# time: $HANDLER runs with the value on stdin and KBRIDGE_* variables as kbridge worker --exec sets
# them. Text only: a field holding a newline or a NUL byte is misread; headers pass unchecked.
: "${KBRIDGE_REDIS_URL:=redis://127.0.0.1:6379/0}" "${KBRIDGE_PREFIX:=kbridge}" "${KBRIDGE_GROUP:=workers}"
: "${KBRIDGE_CONSUMER:=sh-$(hostname)-$$}" "${KBRIDGE_VISIBILITY_TIMEOUT_MS:=10000}" "${KBRIDGE_MAX_DELIVERIES:=5}"
: "${KBRIDGE_SHUTDOWN_TIMEOUT_MS:=30000}" "${HANDLER:=cat}" "${KBRIDGE_LUA_DIR:=$(dirname "$0")/../../worker/lua}"
P=$KBRIDGE_PREFIX G=$KBRIDGE_GROUP C=$KBRIDGE_CONSUMER VT=$KBRIDGE_VISIBILITY_TIMEOUT_MS MAX=$KBRIDGE_MAX_DELIVERIES
T=$(mktemp -d) stop=0 seen=
trap 'stop=1' TERM INT
trap 'rm -rf "$T"' EXIT
r() { redis-cli -u "$KBRIDGE_REDIS_URL" --raw "$@"; }
lua() { f=$1; shift; r EVAL "$(cat "$KBRIDGE_LUA_DIR/$f.lua")" "$@"; }
get() { printf '%s\n' "$entry" | awk -v f="$1" 'NR>2 && NR%2==1 && $0==f { if ((getline v) > 0) n = 1 } END { if (n) print v; exit !n }'; }
check() { printf '%s\n' "$entry" | awk -v s="$x" -v id="$id" '  # the entry rules of docs/wire.md, headers aside
  function dec(v, m) { if (m == "T") { m = "9223372036854775807"; if (v ~ /^-/) { v = substr(v, 2); m = "9223372036854775808"; if (v == "0") return 0 } }
    return v ~ /^(0|[1-9][0-9]*)$/ && (length(v) < length(m) || (length(v) == length(m) && (v "") <= (m ""))) }
  NR>2 && NR%2==1 { n = $0; if ((getline v) > 0) { if (!h[n] && n !~ /^dlq_/) c++; f[n] = v; h[n] = 1 } }
  END { t = s; sub(/:replay$/, "", t); sub(/^.*:\{/, "", t); sub(/\}$/, "", t)
    if (c > 1000) print "more than 1000 fields"; else if (f["topic"] == "") print "topic missing or empty"; else if (!h["partition"] || !dec(f["partition"], "2147483647")) print "bad partition"
    else if (!h["offset"] || !dec(f["offset"], "9223372036854775807")) print "bad offset"; else if (!h["timestamp"] || !dec(f["timestamp"], "T")) print "bad timestamp"
    else if (f["topic"] ":" f["partition"] != t) print "topic/partition not the stream'"'"'s"; else if (s !~ /:replay$/ && id != f["offset"] "-1") print "ID is not <offset>-1"
    else print "ok" }'; }
dlq() {  # dead letter + XACK (deadletter.lua), with the entry's fields but dlq_* (too many: the contract's only): $1 reason, $2 error, $3 deliveries
  reason=$1 err=$2 d=$3 i=0 skip=0 N=$(printf '%s\n' "$entry" | wc -l); set --
  while IFS= read -r l; do i=$((i + 1)); [ $i -gt 2 ] && [ $i -lt "$N" ] || continue
    if [ $((i % 2)) = 1 ]; then skip=0; case $l in dlq_*) skip=1 ;; esac
      case $err:$l in "more than 1000 fields:"topic|*:partition|*:offset|*:timestamp|*:key|*:value|*:headers) ;; "more than 1000 fields:"*) skip=1 ;; esac; fi
    [ $skip = 1 ] || set -- "$@" "$l"
  done <<EOF
$entry
EOF
  lua deadletter 2 "$x" "${x%:replay}:dlq" "$G" "$C" "$id" "$@" dlq_reason "$reason" dlq_error "$err" dlq_group "$G" \
    dlq_consumer "$C" dlq_deliveries "$d" dlq_stream "$x" dlq_id "$id" dlq_time "$(date +%s)000" >/dev/null; }
handle() {  # the entry in $entry, read from $x with delivery count $1
  n=$1 id=$(printf '%s\n' "$entry" | sed -n 2p) why=$(check)
  [ "$why" = ok ] || { dlq malformed "$why" "$n"; return; }
  case $x in *:replay) g=$(get dlq_group) && [ "$g" != "$G" ] && { r XACK "$x" "$G" "$id" >/dev/null; return; } ;; esac
  [ "$n" -le "$MAX" ] || { dlq max-deliveries "reclaimed with $n deliveries: its workers kept dying" "$n"; return; }
  ( while sleep "$(awk -v v="$VT" 'BEGIN { print v / 3000 }')" && kill -0 $$ 2>/dev/null; do lua lease 1 "$x" "$G" "$C" "$id" >/dev/null; done ) & lp=$!
  ( unset KBRIDGE_REDIS_URL; export KBRIDGE_TOPIC="$(get topic)" KBRIDGE_PARTITION="$(get partition)" KBRIDGE_OFFSET="$(get offset)" \
      KBRIDGE_TIMESTAMP="$(get timestamp)" KBRIDGE_DELIVERIES="$n" KBRIDGE_STREAM="$x" KBRIDGE_ID="$id"
    if k=$(get key); then export KBRIDGE_KEY="$k" KBRIDGE_KEY_B64="$(printf %s "$k" | base64 | tr -d '\n')"; else export KBRIDGE_KEY_NULL=1; fi
    if h=$(get headers); then export KBRIDGE_HEADERS="$h"; fi; case $x in *:replay) export KBRIDGE_REPLAYED=1 ;; esac
    v=$(get value) || export KBRIDGE_VALUE_NULL=1; printf %s "$v" | sh -c "$HANDLER" ) & hp=$!
  wait $hp; rc=$?
  if [ $stop = 1 ] && kill -0 $hp 2>/dev/null; then  # SIGTERM: give the handler the shutdown timeout
    i=0; while kill -0 $hp 2>/dev/null && [ $i -lt $((KBRIDGE_SHUTDOWN_TIMEOUT_MS / 100)) ]; do sleep 0.1; i=$((i + 1)); done
    kill -0 $hp 2>/dev/null && { kill -KILL $hp $lp; echo "worker.sh: handler still running after the shutdown timeout" >&2; exit 1; }
    wait $hp; rc=$?
  fi
  kill $lp 2>/dev/null
  if [ $rc = 0 ]; then r XACK "$x" "$G" "$id" >/dev/null
  elif [ "$n" -ge "$MAX" ]; then dlq max-deliveries "handler exit status $rc" "$n"; fi  # else: stays pending, reclaimed after VT
}
while [ $stop = 0 ]; do
  v=$(r HGET "$P:wire" version); [ -z "$v" ] || [ "$v" = 1 ] || { echo "worker.sh: wire version $v, not 1" >&2; exit 1; }
  got=0
  for s in $(r SMEMBERS "$P:streams"); do
    for x in "$s" "$s:replay"; do
      [ $stop = 0 ] || break 2
      entry=$(r XREADGROUP GROUP "$G" "$C" COUNT 1 STREAMS "$x" '>'; echo .)
      case $entry in "$x"*) got=1; seen="$seen $x"; handle 1; continue ;; NOGROUP*|ERR*) continue ;; esac
      cf=$T/$(printf %s "$x" | tr -c 'A-Za-z0-9' _); cur=$(cat "$cf" 2>/dev/null || echo 0-0)
      out=$(lua reclaim 1 "$x" "$G" "$C" "$VT" "$cur" 1 2>/dev/null; echo .)
      case $out in [0-9]*-[0-9]*) ;; *) continue ;; esac
      printf '%s\n' "$out" | sed -n 1p > "$cf"; id=$(printf '%s\n' "$out" | sed -n 2p); [ -n "$id" ] || continue
      entry=$(printf '%s\n' "$x"; printf '%s\n' "$out" | sed '1d;$d' | sed '$d'; echo .)
      got=1 seen="$seen $x"; handle "$(printf '%s\n' "$out" | tail -n 2 | head -n 1)"
    done
  done
  [ $got = 1 ] || sleep 0.2
done
for x in $(printf '%s\n' $seen | sort -u); do lua delconsumer 1 "$x" "$G" "$C" >/dev/null; done
