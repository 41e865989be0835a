#!/usr/bin/env bash
# Starts (start DIR) or stops (stop DIR) a single KRaft Kafka 4.1.2 broker with
# tiered storage (KIP-405) on 127.0.0.1:32500, remote tier = Kafka's own test
# plugin LocalTieredStorage (kafka-storage-4.1.2-test.jar, fetched with mvn).
# Used by TestBreakTieredStorage (KFETCH_TIERED_BROKER=127.0.0.1:32500).
# EXTRA (env) adds server.properties lines, e.g. remote.fetch.max.wait.ms=1.
set -euo pipefail
cmd=$1 dir=$2
libs=${KBRIDGE_CACHE:-$HOME/.cache/kbridge}/kafka-4.1.2/libs
case $cmd in
start)
  mkdir -p "$dir/jars" "$dir/remote"
  [[ -f $dir/jars/kafka-storage-4.1.2-test.jar ]] ||
    mvn -B -ntp -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
      -Dartifact=org.apache.kafka:kafka-storage:4.1.2:jar:test -DoutputDirectory="$dir/jars"
  cat >"$dir/server.properties" <<P
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:32501
listeners=PLAINTEXT://127.0.0.1:32500,CONTROLLER://127.0.0.1:32501
advertised.listeners=PLAINTEXT://127.0.0.1:32500
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
log.retention.check.interval.ms=1000
remote.log.storage.system.enable=true
remote.log.storage.manager.class.name=org.apache.kafka.server.log.remote.storage.LocalTieredStorage
rsm.config.dir=$dir/remote
remote.log.metadata.manager.listener.name=PLAINTEXT
rlmm.config.remote.log.metadata.topic.replication.factor=1
rlmm.config.remote.log.metadata.topic.num.partitions=1
remote.log.manager.task.interval.ms=1000
${EXTRA:-}
P
  if [[ ! -f $dir/data/meta.properties ]]; then
    java -cp "$libs/*" kafka.tools.StorageTool format -t "$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')" \
      -c "$dir/server.properties" --ignore-formatted >"$dir/format.log" 2>&1
  fi
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' launcher "$dir/pid" \
    java -Xmx512m -Xms128m -cp "$libs/*:$dir/jars/*" kafka.Kafka "$dir/server.properties" \
    </dev/null >"$dir/kafka.log" 2>&1 &
  for _ in $(seq 120); do
    (echo >/dev/tcp/127.0.0.1/32500) 2>/dev/null && grep -q "Kafka Server started\|started (kafka.server" "$dir/kafka.log" && { echo "ready pid $(cat "$dir/pid")"; exit 0; }
    sleep 1
  done
  echo "not ready; see $dir/kafka.log" >&2; exit 1 ;;
stop)
  [[ -f $dir/pid ]] && kill "$(cat "$dir/pid")" && echo "stopped $(cat "$dir/pid")" ;;
esac
