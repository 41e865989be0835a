package bridge

import (
	"errors"
	"fmt"
)

// ErrEvictionPolicy is returned by Run when Redis may evict keys
// (maxmemory-policy is not noeviction) and Config.AllowEviction is false: an
// evicted stream would lose records that were never processed.
var ErrEvictionPolicy = errors.New("redis maxmemory-policy is not noeviction")

// ErrClosed is returned by Run when it is called a second time.
var ErrClosed = errors.New("bridge: ingest already ran")

// ConfigError lists every problem of a Config.
type ConfigError struct {
	Problems []string
}

func (e *ConfigError) Error() string {
	if len(e.Problems) == 1 {
		return "invalid configuration: " + e.Problems[0]
	}
	s := "invalid configuration:"
	for _, p := range e.Problems {
		s += "\n  - " + p
	}
	return s
}

// CommitError is a failed Kafka offset commit. Nothing is trimmed after it;
// the next interval commits again.
type CommitError struct {
	Offsets map[string]map[int]int64
	Err     error
}

func (e *CommitError) Error() string {
	return fmt.Sprintf("commit %v: %v", e.Offsets, e.Err)
}

func (e *CommitError) Unwrap() error { return e.Err }
