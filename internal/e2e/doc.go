// Package e2e holds end-to-end tests of kbridge processes against real
// servers set up the way production ones are: a Kafka broker with SASL_SSL
// (SCRAM-SHA-256/512), SASL_PLAINTEXT (PLAIN) and ACLs, a Redis with TLS,
// client certificates and an ACL user, and a Redis Cluster with replicas that
// loses a master and has a slot migrated under load.
//
// The package has no code outside its tests. The tests start their own
// servers with scripts/kafka.sh, scripts/redis.sh, scripts/redis-cluster.sh
// and scripts/certs.sh on free loopback ports, and skip unless the real
// services are configured (KAFKA_BROKERS and REDIS_ADDR, as scripts/test.sh
// sets them): that is how the tests know Kafka's jars and redis-server are
// installed.
//
//	KAFKA_BROKERS=127.0.0.1:19092 REDIS_ADDR=127.0.0.1:16379 go test -v ./internal/e2e/
package e2e
