package bridge_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/testenv"
)

// TestShutdownWhileJoining (issue 7 point 9): SIGTERM (ctx cancelled) while
// the ingest waits in JoinGroup returns within 10s, Docker's stop timeout.
// Another member joined the group and never rejoins, so the coordinator
// holds the ingest's JoinGroup for that member's rebalance timeout (60s).
// On main Run waited for kafka-go's group to close, which waits for the
// JoinGroup answer: about 60s.
func TestShutdownWhileJoining(t *testing.T) {
	e := newEnv(t, 1)
	cl := &kafka.Client{Addr: kafka.TCP(e.brokers...), Timeout: 90 * time.Second}
	ctx := context.Background()
	join := func(member string) (*kafka.JoinGroupResponse, error) {
		return cl.JoinGroup(ctx, &kafka.JoinGroupRequest{GroupID: e.group, MemberID: member,
			SessionTimeout: 60 * time.Second, RebalanceTimeout: 60 * time.Second, ProtocolType: "consumer",
			Protocols: []kafka.GroupProtocol{{Name: "range", Metadata: kafka.GroupProtocolSubscription{Topics: []string{e.topic}}}}})
	}
	res, err := join("")
	if err == nil && errors.Is(res.Error, kafka.MemberIDRequired) {
		res, err = join(res.MemberID)
	}
	if err == nil {
		err = res.Error
	}
	if err != nil {
		t.Fatalf("the blocking member's JoinGroup: %v", err)
	}
	t.Logf("a member that never rejoins joined generation %d (session and rebalance timeouts 60s)", res.GenerationID)

	cfg := e.config(t)
	in, err := bridge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- in.Run(rctx) }()
	testenv.Eventually(t, 60*time.Second, func() bool {
		d, err := cl.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{e.group}})
		return err == nil && len(d.Groups) == 1 && d.Groups[0].GroupState == "PreparingRebalance"
	}, "the ingest's JoinGroup did not start a rebalance")
	cancel()
	began := time.Now()
	select {
	case err := <-done:
		took := time.Since(began)
		if err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
		if took > 10*time.Second {
			t.Errorf("Run returned %v after the cancel, want within 10s", took)
		}
		if st := in.Stats(); st.Rebalances != 0 {
			t.Errorf("joined %d generations, want none", st.Rebalances)
		}
		t.Logf("cancelled while joining: Run returned after %v", took.Round(time.Millisecond))
	case <-time.After(90 * time.Second):
		t.Fatalf("Run did not return within 90s of the cancel")
	}
}
