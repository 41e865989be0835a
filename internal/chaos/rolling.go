package chaos

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
)

// Handover is one restart of an ingest in a rolling restart.
type Handover struct {
	Proc     string
	Signal   string        // SIGTERM or SIGKILL
	Exit     time.Duration // SIGTERM: how long the process took to exit
	ExitCode int
	// Stable: from the signal until the group was stable again with every
	// ingest a member and every partition assigned.
	Stable time.Duration
	// Handover: from the signal until every partition's commit had moved
	// past the log end it had at the signal (the records produced meanwhile
	// were bridged, handled and committed).
	Handover time.Duration
	Err      string
}

func (h Handover) String() string {
	s := fmt.Sprintf("%s %s: group stable after %s, every commit past the hand-over point after %s",
		h.Signal, h.Proc, secs(h.Stable), secs(h.Handover))
	if h.Signal == "SIGTERM" {
		s += fmt.Sprintf(" (exit %d in %s)", h.ExitCode, secs(h.Exit))
	}
	if h.Err != "" {
		s += " — " + h.Err
	}
	return s
}

// GroupState describes the ingest group: its state, members (IDs), and how
// many partitions of the topic are assigned.
func (s *System) GroupState(ctx context.Context) (state string, members []string, assigned int, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := s.client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{s.Group}})
	if err != nil {
		return "", nil, 0, err
	}
	if len(res.Groups) != 1 {
		return "", nil, 0, fmt.Errorf("describe group %s: %d groups", s.Group, len(res.Groups))
	}
	g := res.Groups[0]
	if g.Error != nil {
		return "", nil, 0, g.Error
	}
	for _, m := range g.Members {
		members = append(members, m.MemberID)
		for _, t := range m.MemberAssignments.Topics {
			if t.Topic == s.Topic {
				assigned += len(t.Partitions)
			}
		}
	}
	return g.GroupState, members, assigned, nil
}

// WaitStable waits until the group is Stable with every ingest a member and
// every partition assigned; it returns when that was first seen.
func (s *System) WaitStable(ctx context.Context, within time.Duration) (time.Time, error) {
	return s.waitGroup(ctx, within, nil)
}

// RollingRestart restarts the ingests one after another with sig (SIGTERM:
// graceful; SIGKILL: a crash), under whatever load runs, each once the
// previous hand-over is complete, and reports each hand-over.
func (s *System) RollingRestart(ctx context.Context, sig syscall.Signal, within time.Duration) []Handover {
	var out []Handover
	for _, p := range s.Ingests {
		h := Handover{Proc: p.Name, Signal: map[syscall.Signal]string{syscall.SIGTERM: "SIGTERM", syscall.SIGKILL: "SIGKILL"}[sig]}
		_, before, _, err := s.GroupState(ctx)
		if err != nil {
			h.Err = err.Error()
			out = append(out, h)
			continue
		}
		point, err := s.Monitor.LogEnds(ctx)
		if err != nil {
			h.Err = err.Error()
			out = append(out, h)
			continue
		}
		began := time.Now()
		switch sig {
		case syscall.SIGTERM:
			took, ex, err := p.Term(within)
			h.Exit, h.ExitCode = took, ex.Code
			if err != nil {
				h.Err = err.Error()
			} else if ex.Code != 0 {
				h.Err = fmt.Sprintf("exit code %d after SIGTERM", ex.Code)
			}
		default:
			if err := p.Kill(); err != nil {
				h.Err = err.Error()
			}
		}
		if err := p.Start(); err != nil {
			h.Err = err.Error()
			out = append(out, h)
			return out
		}
		// Each restart replaces one member: the group is through with the
		// hand-over once exactly one of the members of before is gone.
		stable, err := s.waitReplaced(ctx, within, before)
		if err != nil {
			h.Err = err.Error()
		} else {
			h.Stable = stable.Sub(began)
		}
		deadline := time.Now().Add(within)
		for {
			if t, ok := Recovery(s.Monitor.Samples(), began, point); ok {
				h.Handover = t.Sub(began)
				break
			}
			if time.Now().After(deadline) {
				h.Err += fmt.Sprintf(" commits not past the hand-over point after %v", within)
				break
			}
			sleepCtx(ctx, 200*time.Millisecond)
			if ctx.Err() != nil {
				return out
			}
		}
		s.log.Info("hand-over", "handover", h.String())
		out = append(out, h)
	}
	return out
}

// waitReplaced waits until the group is Stable, every partition assigned,
// with as many members as ingests, of which exactly len(before)-1 are from
// before: the restarted process's old membership gone and its new one in.
func (s *System) waitReplaced(ctx context.Context, within time.Duration, before []string) (time.Time, error) {
	return s.waitGroup(ctx, within, before)
}

func (s *System) waitGroup(ctx context.Context, within time.Duration, before []string) (time.Time, error) {
	deadline := time.Now().Add(within)
	for {
		state, members, assigned, err := s.GroupState(ctx)
		kept := 0
		for _, m := range members {
			if slices.Contains(before, m) {
				kept++
			}
		}
		if err == nil && state == "Stable" && len(members) == len(s.Ingests) && kept == max(len(before)-1, 0) && assigned == s.cfg.Partitions {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("group not stable after %v: state %q, %d members (%d of before the restart), %d of %d partitions assigned, err %v",
				within, state, len(members), kept, assigned, s.cfg.Partitions, err)
		}
		sleepCtx(ctx, 200*time.Millisecond)
		if ctx.Err() != nil {
			return time.Time{}, ctx.Err()
		}
	}
}

// Finish stops the load, drains, stops the processes, and checks the
// ledger: what a run does after its faults, for callers that drive the
// faults themselves.
func (s *System) Finish(ctx context.Context, began time.Time, drainWithin time.Duration) (*Outcome, []Shutdown, error) {
	s.StopLoad()
	_, drainErr := s.Drain(ctx, drainWithin)
	shutdowns := s.StopProcs(60 * time.Second)
	s.Ledger.ScanDeadLetters(ctx, s.rdb, s.Prefix, s.cfg.Partitions)
	deadAtEnd, inKafka := s.deadAtEnd(ctx)
	committed, logEnd, err := s.Monitor.Read(ctx)
	if err != nil {
		return nil, shutdowns, err
	}
	back, past, unacked := s.Monitor.CommitFindings(inKafka)
	s.Ledger.mu.Lock()
	producedAt := make(map[int64]time.Time, len(s.Ledger.produced))
	for k, v := range s.Ledger.produced {
		producedAt[k] = v
	}
	s.Ledger.mu.Unlock()
	poisoned, poisonSeqs := s.Ledger.Poisoned()
	o := Check(CheckInput{Began: began, LogEnd: logEnd, Committed: committed,
		Deliveries: s.Ledger.Deliveries(), Produced: len(producedAt), ProducedAt: producedAt,
		DeadSeen: s.Ledger.Dead(), DeadAtEnd: deadAtEnd, DeadInKafka: inKafka, Poisoned: poisoned, PoisonSeqs: poisonSeqs, Backwards: back, PastEnd: past, PastUnacked: unacked})
	return o, shutdowns, drainErr
}
