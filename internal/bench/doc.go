// Package bench holds what the benchmark driver (internal/bench/kbench,
// run by scripts/bench.sh) shares: process CPU and memory from /proc, Redis
// INFO figures, Kafka topic helpers, and small statistics. Nothing here is
// used by kbridge itself.
package bench
