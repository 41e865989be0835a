package main

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/kbridge/kbridge/bridge"
)

// TestReviewIngestFlagsHostile (issue 7 point 9, break-it review): the
// values the issue says must be reachable, given the ways users give them —
// through the environment, at the extremes.
func TestReviewIngestFlagsHostile(t *testing.T) {
	for _, tt := range []struct {
		name  string
		env   map[string]string
		args  []string
		check func(bridge.Config) bool
	}{
		{"low watermark 0 from the environment", map[string]string{"KBRIDGE_LOW_WATERMARK": "0"}, []string{"--partition-cap", "10"},
			func(c bridge.Config) bool { return c.LowWatermark == bridge.ResumeWhenEmpty }},
		{"commit interval 2m alone", nil, []string{"--commit-interval", "2m"},
			func(c bridge.Config) bool { return c.CommitInterval == 2*time.Minute }},
		{"commit interval 45s from the environment", map[string]string{"KBRIDGE_COMMIT_INTERVAL": "45s"}, nil,
			func(c bridge.Config) bool { return c.CommitInterval == 45*time.Second }},
		{"partition cap 1, no low watermark", nil, []string{"--partition-cap", "1"},
			func(c bridge.Config) bool { return c.PartitionCap == 1 }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			cfg, probs := parseIngest(t, tt.args...)
			t.Logf("env %v args %v: problems %q", tt.env, tt.args, probs)
			if len(probs) > 0 || !tt.check(cfg) {
				t.Errorf("kbridge ingest %v (env %v): problems %q, config low=%d commit=%v cap=%d", tt.args, tt.env, probs, cfg.LowWatermark, cfg.CommitInterval, cfg.PartitionCap)
			}
			if len(probs) == 0 {
				cfg.Redis = redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // New does no I/O
				if _, err := bridge.New(cfg); err != nil {
					t.Errorf("bridge.New refused what the CLI accepted: %v", err)
				}
			}
		})
	}
}
