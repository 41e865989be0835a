#!/usr/bin/env bash
# Real single-node Apache Kafka 4.x (KRaft, combined broker+controller) for tests.
# Jars come from Maven Central through `mvn`, cached per version; no Docker, no tarball.
set -euo pipefail

LOG_NAME=kafka.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/_lib.sh
source "$SCRIPT_DIR/_lib.sh"

usage() {
  cat <<EOF
Usage: scripts/kafka.sh start|stop|status|wait|restart|libs|run-class CLASS [ARGS...]

Runs a real single-node Apache Kafka broker (KRaft, broker+controller in one JVM)
on 127.0.0.1 from Kafka's own jars on Maven Central (resolved with mvn, cached).

Commands:
  start       download jars if needed, format storage if needed, start in the
              background, wait until the broker answers metadata requests and
              print "kafka ready on 127.0.0.1:PORT". Already running -> exit 0.
  stop        SIGTERM, wait up to KAFKA_STOP_TIMEOUT s, then SIGKILL. Stopped -> exit 0.
  status      print "running ..." (exit 0) or "stopped" (exit 3).
  wait        wait until a broker on KAFKA_PORT answers (up to KAFKA_START_TIMEOUT s).
  restart     stop, then start (data kept unless KAFKA_FRESH=1).
  libs        make sure the jars are cached and print the libs directory.
  run-class   run a Kafka tool class with the cached jars, e.g.
              scripts/kafka.sh run-class org.apache.kafka.tools.TopicCommand \\
                --bootstrap-server 127.0.0.1:19092 --list

Environment (defaults in brackets):
  KAFKA_VERSION          Kafka release from Maven Central [4.1.2]
  KAFKA_PORT             client (PLAINTEXT) port [19092]
  KAFKA_CONTROLLER_PORT  KRaft controller port [KAFKA_PORT+1]
  KAFKA_DATA_DIR         data/log/pid dir [\${TMPDIR:-/tmp}/kbridge-kafka-\$KAFKA_PORT]
  KAFKA_FRESH=1          on start: wipe KAFKA_DATA_DIR and reformat (a running broker
                         on that data dir is stopped first)
  KAFKA_HEAP_OPTS        JVM heap [-Xms256m -Xmx768m]
  KAFKA_START_TIMEOUT    seconds to wait for readiness [90]
  KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL [30]
  KAFKA_EXTRA_PROPS      extra server.properties lines (newline separated)

Security (all off by default; the PLAINTEXT listener on KAFKA_PORT always stays,
as the admin door of tests: its principal User:ANONYMOUS is a super user):
  KAFKA_SASL_SSL_PORT        add a SASL_SSL listener (SCRAM-SHA-256 and SCRAM-SHA-512)
  KAFKA_SASL_PLAINTEXT_PORT  add a SASL_PLAINTEXT listener (PLAIN)
  KAFKA_SASL_USERS           users of both listeners, "name:password,name:password"
                             (SCRAM credentials of both hashes are written when the
                             storage is formatted, and added, changed or removed
                             through the PLAINTEXT listener when a later start
                             or restart lists other users; PLAIN ones go in
                             server.properties, mode 0600). Passwords never go on
                             a command line.
  KAFKA_TLS_DIR              certificates for SASL_SSL, as scripts/certs.sh writes them
                             (server.pem, ca.crt) [\$KAFKA_DATA_DIR/tls, made by certs.sh]
  KAFKA_ACL=1                StandardAuthorizer, no access without an ACL
                             (allow.everyone.if.no.acl.found=false)
  KAFKA_SUPER_USERS          more super users besides ANONYMOUS, "name,name" [admin]
  KAFKA_LOG4J_VERSION    log4j2 version put on the classpath [2.25.3]
  KAFKA_SLF4J_VERSION    slf4j-api version put on the classpath [2.0.17]
  KBRIDGE_CACHE          jar cache root [\$HOME/.cache/kbridge]

"start" on a broker that already runs checks that its listeners, certificates,
PLAIN users and ACL settings are those of the environment (it stops with the
settings that differ: "restart" applies them) and brings its SCRAM users in
line with KAFKA_SASL_USERS.

Files in KAFKA_DATA_DIR: server.properties, kafka.pid, kafka.log (broker log),
kraft-logs/ (topic + metadata data), scram-users (user names and password
hashes of the SCRAM credentials written; mode 0600).
EOF
}

KAFKA_VERSION=${KAFKA_VERSION:-4.1.2}
KAFKA_PORT=${KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_DATA_DIR=${KAFKA_DATA_DIR:-${TMPDIR:-/tmp}/kbridge-kafka-$KAFKA_PORT}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
KAFKA_LOG4J_VERSION=${KAFKA_LOG4J_VERSION:-2.25.3}
KAFKA_SLF4J_VERSION=${KAFKA_SLF4J_VERSION:-2.0.17}
KBRIDGE_CACHE=${KBRIDGE_CACHE:-$HOME/.cache/kbridge}
KAFKA_SASL_SSL_PORT=${KAFKA_SASL_SSL_PORT:-}
KAFKA_SASL_PLAINTEXT_PORT=${KAFKA_SASL_PLAINTEXT_PORT:-}
KAFKA_SASL_USERS=${KAFKA_SASL_USERS:-}
KAFKA_TLS_DIR=${KAFKA_TLS_DIR:-$KAFKA_DATA_DIR/tls}
KAFKA_ACL=${KAFKA_ACL:-0}
KAFKA_SUPER_USERS=${KAFKA_SUPER_USERS:-admin}

KAFKA_HOME=$KBRIDGE_CACHE/kafka-$KAFKA_VERSION
LIBS=$KAFKA_HOME/libs
PID_FILE=$KAFKA_DATA_DIR/kafka.pid
LOG_FILE=$KAFKA_DATA_DIR/kafka.log
PROPS=$KAFKA_DATA_DIR/server.properties
SCRAM_FILE=$KAFKA_DATA_DIR/scram-users
LOG_DIRS=$KAFKA_DATA_DIR/kraft-logs
ADDR=127.0.0.1:$KAFKA_PORT

# JVM flags for short-lived tool JVMs (fast start, small heap).
TOOL_JVM=(-Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto
  -Djava.awt.headless=true "-Dlog4j2.configurationFile=$KAFKA_HOME/tools-log4j2.properties")

# ---------------------------------------------------------------- jars
ensure_libs() {
  [[ -f $LIBS/.complete ]] && return 0
  ensure_cmds java:openjdk-17-jre-headless mvn:maven
  mkdir -p "$KAFKA_HOME"
  # Serialize concurrent downloads (tests may start several brokers at once).
  exec 9>"$KAFKA_HOME/.lock"
  flock -w 900 9 || die "timed out waiting for the download lock $KAFKA_HOME/.lock"
  if [[ -f $LIBS/.complete ]]; then exec 9>&-; return 0; fi

  local t0=$SECONDS
  log "resolving Kafka $KAFKA_VERSION jars from Maven Central (org.apache.kafka:kafka_2.13 + kafka-tools) into $LIBS"
  cat >"$KAFKA_HOME/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by kbridge scripts/kafka.sh: runtime classpath of a Kafka broker -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.kbridge.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- broker (kafka.Kafka), storage format (kafka.tools.StorageTool) -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- CLI tools (TopicCommand, ConsoleProducer, ConsumerGroupCommand, ...);
         Kafka Connect is not needed for them -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <exclusions>
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
        <exclusion><groupId>com.fasterxml.jackson.jakarta.rs</groupId><artifactId>*</artifactId></exclusion>
      </exclusions>
    </dependency>
    <!-- logging: the published poms bring log4j-core but no slf4j binding, and
         an old slf4j-api 1.7; the release tarball ships slf4j 2 + log4j-slf4j2-impl -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>$KAFKA_SLF4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-api</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
  rm -rf "$LIBS.tmp"
  if ! mvn -B -ntp -f "$KAFKA_HOME/pom.xml" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" >"$KAFKA_HOME/mvn.log" 2>&1; then
    tail -n 30 "$KAFKA_HOME/mvn.log" >&2
    die "mvn could not resolve Kafka $KAFKA_VERSION (full output: $KAFKA_HOME/mvn.log)"
  fi
  [[ -f $LIBS.tmp/kafka_2.13-$KAFKA_VERSION.jar && -f $LIBS.tmp/kafka-tools-$KAFKA_VERSION.jar ]] ||
    die "mvn finished but kafka jars are missing in $LIBS.tmp"
  rm -rf "$LIBS"
  mv "$LIBS.tmp" "$LIBS"
  write_log4j_configs
  touch "$LIBS/.complete"
  log "cached $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) in $(human_duration $((SECONDS - t0)))"
  exec 9>&-
}

write_log4j_configs() {
  # Broker: everything to stdout, which start() redirects to $KAFKA_DATA_DIR/kafka.log.
  # shutdownHook=disable: otherwise log4j's own JVM shutdown hook stops logging
  # while Kafka's shutdown hook is still running, and the shutdown log is lost.
  cat >"$KAFKA_HOME/broker-log4j2.properties" <<'L4J'
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
L4J
  # Tools: only warnings, on stderr.
  cat >"$KAFKA_HOME/tools-log4j2.properties" <<'L4J'
status = error
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
L4J
}

# ---------------------------------------------------------------- process helpers
read_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid=$(<"$PID_FILE") || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # Guard against pid reuse: it must be our broker on this data dir.
  pid_alive "$pid" && pid_cmdline_has "$pid" kafka.Kafka && pid_cmdline_has "$pid" "$PROPS" || return 1
  printf '%s' "$pid"
}

is_running() { read_pid >/dev/null; }

# metadata_ok: a real Kafka client gets metadata (topic list) from the broker.
metadata_ok() {
  timeout 30 java "${TOOL_JVM[@]}" -cp "$LIBS/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$ADDR" --list >/dev/null 2>"$KAFKA_HOME/.probe-$KAFKA_PORT.err"
}

# wait_ready [PID]: poll port, then metadata, until KAFKA_START_TIMEOUT.
wait_ready() {
  local pid=${1:-} deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while :; do
    if [[ -n $pid ]] && ! pid_alive "$pid"; then
      log "broker process $pid exited during startup; last lines of $LOG_FILE:"
      tail -n 40 "$LOG_FILE" >&2 || true
      return 1
    fi
    if port_open "$KAFKA_PORT" && metadata_ok; then
      return 0
    fi
    if (( SECONDS >= deadline )); then
      log "broker on $ADDR not ready after ${KAFKA_START_TIMEOUT}s"
      [[ -s $KAFKA_HOME/.probe-$KAFKA_PORT.err ]] && tail -n 5 "$KAFKA_HOME/.probe-$KAFKA_PORT.err" >&2
      [[ -f $LOG_FILE ]] && { log "last lines of $LOG_FILE:"; tail -n 30 "$LOG_FILE" >&2; }
      return 1
    fi
    sleep 0.5
  done
}

# write_props [FILE]: the broker's configuration (default $PROPS), mode 0600:
# it holds the PLAIN users' passwords.
write_props() {
  local out=${1:-$PROPS}
  (umask 077; : >"$out")
  chmod 0600 "$out"
  cat >"$out" <<PROPS
# generated by kbridge scripts/kafka.sh — single-node KRaft broker for tests
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT$(extra_listeners)
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT$(extra_listeners)
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SASL_PLAINTEXT:SASL_PLAINTEXT
log.dirs=$LOG_DIRS

num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
# After a SIGKILL the restarted broker cannot re-register until the old
# registration's session expires (default 9 s); keep that short for crash tests.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000

num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=168
log.retention.check.interval.ms=300000
PROPS
  security_props >>"$out"
  if [[ -n ${KAFKA_EXTRA_PROPS:-} ]]; then
    printf '\n# KAFKA_EXTRA_PROPS\n%s\n' "$KAFKA_EXTRA_PROPS" >>"$out"
  fi
}

# security_lines FILE: the settings of a server.properties that decide who
# may connect and how (listeners, TLS, SASL, PLAIN users, authorizer), sorted.
security_lines() {
  grep -E '^(listeners|advertised\.listeners|listener\.|authorizer\.|allow\.everyone|super\.users|sasl\.|ssl\.)' "$1" 2>/dev/null | sort || true
}

# config_differs: prints the names of the security settings in which the
# running broker's server.properties differs from what the environment asks
# for (names only: PLAIN passwords are values), nothing when none.
config_differs() {
  local want
  want=$(mktemp "$KAFKA_DATA_DIR/.props.XXXXXX")
  write_props "$want"
  diff <(security_lines "$PROPS") <(security_lines "$want") | sed -n 's/^[<>] \([^=]*\)=.*/\1/p' | sort -u | paste -sd, - || true
  rm -f "$want"
}

# ---------------------------------------------------------------- security (opt-in)
# extra_listeners: ",SASL_SSL://...,SASL_PLAINTEXT://..." for the opted-in ones
extra_listeners() {
  [[ -n $KAFKA_SASL_SSL_PORT ]] && printf ',SASL_SSL://127.0.0.1:%s' "$KAFKA_SASL_SSL_PORT"
  [[ -n $KAFKA_SASL_PLAINTEXT_PORT ]] && printf ',SASL_PLAINTEXT://127.0.0.1:%s' "$KAFKA_SASL_PLAINTEXT_PORT"
  return 0
}

# sasl_users: one "name password" line per KAFKA_SASL_USERS entry
sasl_users() {
  local pair
  local IFS=,
  for pair in $KAFKA_SASL_USERS; do
    [[ $pair == *:* && -n ${pair%%:*} && -n ${pair#*:} ]] ||
      die "KAFKA_SASL_USERS: want name:password,name:password (got an entry without both)"
    [[ $pair =~ ^[A-Za-z0-9._-]+:[A-Za-z0-9._~-]+$ ]] ||
      die "KAFKA_SASL_USERS: names and passwords of these test users are limited to [A-Za-z0-9._-] (and ~ in passwords)"
    printf '%s %s\n' "${pair%%:*}" "${pair#*:}"
  done
}

security_props() {
  local name pass
  if [[ -n $KAFKA_SASL_SSL_PORT ]]; then
    cat <<PROPS

# SASL_SSL listener (KAFKA_SASL_SSL_PORT): SCRAM over TLS, certificates of $KAFKA_TLS_DIR
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$KAFKA_TLS_DIR/server.pem
listener.name.sasl_ssl.ssl.truststore.type=PEM
listener.name.sasl_ssl.ssl.truststore.location=$KAFKA_TLS_DIR/ca.crt
listener.name.sasl_ssl.ssl.client.auth=none
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
  fi
  if [[ -n $KAFKA_SASL_PLAINTEXT_PORT ]]; then
    printf '\n# SASL_PLAINTEXT listener (KAFKA_SASL_PLAINTEXT_PORT): PLAIN, users of KAFKA_SASL_USERS\n'
    printf 'listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN\n'
    printf 'listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required'
    while read -r name pass; do
      [[ -n $name ]] && printf ' user_%s="%s"' "$name" "$pass"
    done < <(sasl_users)
    printf ';\n'
  fi
  if [[ $KAFKA_ACL == 1 ]]; then
    local supers="User:ANONYMOUS" u
    local IFS=,
    for u in $KAFKA_SUPER_USERS; do [[ -n $u ]] && supers+=";User:$u"; done
    cat <<PROPS

# KAFKA_ACL=1: nothing is allowed without an ACL, except to the super users
# (ANONYMOUS = the PLAINTEXT and controller listeners: the tests' admin door)
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=$supers
PROPS
  fi
}

# random_cluster_id: 16 random bytes, base64url without padding (Kafka Uuid
# format), never one that starts with '-': the storage tool would read it as
# an option ("argument --cluster-id/-t: expected one argument"), failing one
# start in 64.
random_cluster_id() {
  local id
  id=-
  while [[ $id == -* ]]; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
  done
  printf '%s\n' "$id"
}

format_storage() {
  local cid
  cid=$(random_cluster_id)
  log "formatting storage in $LOG_DIRS (cluster id $cid)"
  # SCRAM credentials go in the bootstrap metadata at format time (later
  # changes: sync_scram_users); KAFKA_SASL_USERS get both hashes. The tool's
  # arguments go in a java @argfile of mode 0600, so that the passwords are
  # not on a command line that ps shows (the launcher expands it in-process).
  local args name pass
  args=$(mktemp "$KAFKA_DATA_DIR/.format-args.XXXXXX")
  {
    printf '%s\n' kafka.tools.StorageTool format -t "$cid" -c "\"$PROPS\"" --ignore-formatted
    while read -r name pass; do
      [[ -n $name ]] || continue
      printf -- '--add-scram\n"SCRAM-SHA-256=[name=%s,password=%s]"\n--add-scram\n"SCRAM-SHA-512=[name=%s,password=%s]"\n' \
        "$name" "$pass" "$name" "$pass"
    done < <(sasl_users)
  } >"$args"
  if ! java "${TOOL_JVM[@]}" -cp "$LIBS/*" "@$args" >"$KAFKA_DATA_DIR/format.log" 2>&1; then
    rm -f "$args"
    cat "$KAFKA_DATA_DIR/format.log" >&2
    die "storage format failed"
  fi
  rm -f "$args"
  (umask 077; scram_fingerprint >"$SCRAM_FILE")
}

# scram_fingerprint: "name sha256(name:password)" per KAFKA_SASL_USERS entry,
# sorted: what the SCRAM credentials of the broker should be.
scram_fingerprint() {
  local name pass
  while read -r name pass; do
    [[ -n $name ]] || continue
    printf '%s %s\n' "$name" "$(printf '%s:%s' "$name" "$pass" | sha256sum | cut -c1-64)"
  done < <(sasl_users) | sort
}

# config_tool ARGS...: kafka-configs through the PLAINTEXT listener (its
# principal ANONYMOUS is a super user).
config_tool() {
  timeout 60 java "${TOOL_JVM[@]}" -cp "$LIBS/*" kafka.admin.ConfigCommand --bootstrap-server "$ADDR" "$@"
}

# sync_scram_users: on a running broker, adds or changes the SCRAM
# credentials of the KAFKA_SASL_USERS that scram-users (what was written
# before) does not list as they are now, and removes those of users no
# longer listed. Without this, a restart with other users would keep the old
# credentials and SCRAM logins would fail with no hint.
sync_scram_users() {
  local want have
  want=$(scram_fingerprint)
  have=$(cat "$SCRAM_FILE" 2>/dev/null || true)
  [[ $want == "$have" ]] && return 0
  local name pass f mech changed=()
  f=$(mktemp "$KAFKA_DATA_DIR/.scram.XXXXXX") # mode 0600
  while read -r name pass; do
    [[ -n $name ]] || continue
    grep -qxF "$name $(printf '%s:%s' "$name" "$pass" | sha256sum | cut -c1-64)" <<<"$have" && continue
    # One mechanism per request ("A user credential cannot be altered twice
    # in the same request"); the password in a file of mode 0600, not argv.
    for mech in SCRAM-SHA-256 SCRAM-SHA-512; do
      printf '%s=password=%s\n' "$mech" "$pass" >"$f"
      if ! config_tool --alter --entity-type users --entity-name "$name" --add-config-file "$f" >"$KAFKA_DATA_DIR/scram.log" 2>&1; then
        rm -f "$f"
        tail -n 5 "$KAFKA_DATA_DIR/scram.log" >&2
        die "could not write the $mech credentials of $name through $ADDR"
      fi
    done
    changed+=("$name")
  done < <(sasl_users)
  rm -f "$f"
  for name in $(awk '{print $1}' <<<"$have"); do
    awk -v n="$name" '$1 == n {found = 1} END {exit !found}' <<<"$want" && continue
    for mech in SCRAM-SHA-256 SCRAM-SHA-512; do
      config_tool --alter --entity-type users --entity-name "$name" --delete-config "$mech" >/dev/null 2>&1 ||
        log "note: could not remove the $mech credentials of $name (never written?)"
    done
    changed+=("-$name")
  done
  (umask 077; printf '%s\n' "$want" | sed '/^$/d' >"$SCRAM_FILE")
  log "SCRAM users brought in line with KAFKA_SASL_USERS: ${changed[*]}"
}

# ---------------------------------------------------------------- commands
cmd_start() {
  local pid
  if [[ ${KAFKA_FRESH:-0} == 1 ]] && is_running; then
    log "KAFKA_FRESH=1: stopping the running broker on $ADDR to wipe its data"
    cmd_stop
  fi
  if pid=$(read_pid); then
    log "already running (pid $pid) on $ADDR"
    sasl_users >/dev/null # dies on a malformed KAFKA_SASL_USERS
    local differs
    differs=$(config_differs)
    [[ -z $differs ]] ||
      die "the broker running on $ADDR was started with other security settings than this environment's ($differs): scripts/kafka.sh restart applies them"
    wait_ready "$pid" || die "running broker on $ADDR does not answer"
    sync_scram_users
    echo "kafka ready on $ADDR"
    return 0
  fi
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" $KAFKA_SASL_SSL_PORT $KAFKA_SASL_PLAINTEXT_PORT; do
    port_open "$p" && die "port $p on 127.0.0.1 is already in use by another process (not the broker of $KAFKA_DATA_DIR)"
  done

  sasl_users >/dev/null # dies on a malformed KAFKA_SASL_USERS
  ensure_libs
  local t0=$SECONDS
  if [[ ${KAFKA_FRESH:-0} == 1 && -d $KAFKA_DATA_DIR ]]; then
    log "KAFKA_FRESH=1: wiping $KAFKA_DATA_DIR"
    rm -rf "$KAFKA_DATA_DIR"
  fi
  mkdir -p "$KAFKA_DATA_DIR"
  rm -f "$PID_FILE"
  # certs.sh keeps a valid set, completes or renews it (under a lock)
  [[ -z $KAFKA_SASL_SSL_PORT ]] || bash "$SCRIPT_DIR/certs.sh" "$KAFKA_TLS_DIR" >&2
  write_props
  if [[ ! -f $LOG_DIRS/meta.properties ]]; then
    format_storage
  else
    log "reusing data in $LOG_DIRS (set KAFKA_FRESH=1 to wipe)"
  fi

  log "starting Kafka $KAFKA_VERSION on $ADDR (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT, data $KAFKA_DATA_DIR)"
  # fds 8/9 (test.sh / download locks) are closed so the daemon never holds them.
  # shellcheck disable=SC2086,SC2016
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' kafka-launcher "$PID_FILE" \
    java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
      "-Dlog4j2.configurationFile=$KAFKA_HOME/broker-log4j2.properties" \
      "-Dkafka.logs.dir=$KAFKA_DATA_DIR/logs" \
      -cp "$LIBS/*" kafka.Kafka "$PROPS" \
    </dev/null >>"$LOG_FILE" 2>&1 8>&- 9>&- &
  local launcher=$!
  # the launcher writes its own pid (== the JVM's pid after exec)
  for _ in $(seq 50); do [[ -s $PID_FILE ]] && break; sleep 0.1; done
  pid=$(<"$PID_FILE") || die "broker did not write $PID_FILE"
  [[ $pid == "$launcher" ]] || log "note: launcher pid $launcher, broker pid $pid"
  register_instance kafka "$KAFKA_DATA_DIR" "$KAFKA_PORT"

  if ! wait_ready "$pid"; then
    log "startup failed; stopping pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    exit 1
  fi
  sync_scram_users # storage kept from a run with other KAFKA_SASL_USERS
  log "started in $(human_duration $((SECONDS - t0))) (pid $pid, log $LOG_FILE)"
  echo "kafka ready on $ADDR"
}

cmd_stop() {
  local pid
  if ! pid=$(read_pid); then
    log "not running (data dir $KAFKA_DATA_DIR)"
    rm -f "$PID_FILE"
    return 0
  fi
  log "stopping broker pid $pid on $ADDR (SIGTERM, up to ${KAFKA_STOP_TIMEOUT}s)"
  terminate "$pid" "$KAFKA_STOP_TIMEOUT"
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local pid
  if pid=$(read_pid); then
    local listeners acl=off differs
    listeners=$(sed -n 's/^listeners=//p' "$PROPS")
    grep -q '^authorizer.class.name=' "$PROPS" && acl=on
    echo "running (pid $pid) on $ADDR, data $KAFKA_DATA_DIR, listeners $listeners, ACLs $acl"
    differs=$(config_differs)
    [[ -z $differs ]] || log "note: this environment asks for other security settings ($differs); scripts/kafka.sh restart applies them"
    return 0
  fi
  echo "stopped"
  return 3
}

cmd_wait() {
  ensure_libs
  log "waiting up to ${KAFKA_START_TIMEOUT}s for a broker on $ADDR"
  wait_ready "$(read_pid || true)" || exit 1
  echo "kafka ready on $ADDR"
}

cmd_run_class() {
  (( $# )) || die "run-class needs a class name"
  ensure_libs
  exec java "${TOOL_JVM[@]}" -cp "$LIBS/*" "$@"
}

main() {
  local cmd=${1:-}
  case $cmd in
    start)   cmd_start ;;
    stop)    cmd_stop ;;
    status)  cmd_status ;;
    wait)    cmd_wait ;;
    restart) cmd_stop; cmd_start ;;
    libs)    ensure_libs; echo "$LIBS" ;;
    run-class) shift; cmd_run_class "$@" ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) log "unknown command: $cmd"; usage >&2; exit 2 ;;
  esac
}

main "$@"
