package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// The topics an ingest bridges are the configured ones that exist and that
// its user may read. kafka-go's group leader assigns nothing at all — for
// any topic — when one subscribed topic's metadata has an error (not created
// yet, deleted, not authorised), and its WatchPartitionChanges ends each
// generation as it starts while a topic is missing: a rebalance storm for
// the whole group (issue 7 point 1). So the ingest subscribes only to the
// topics it found, watches the configured ones itself every
// MetadataInterval, and joins the group again (once) when the set changes:
// a topic created, deleted, or made readable. A change in the number of a
// subscribed topic's partitions makes the member that leads the group end
// its generation, so that the group rebalances (once) and the new
// partitions are assigned; the other members need not do anything.

// Topic states (TopicStatus.State).
const (
	// TopicBridged: the topic exists and is read.
	TopicBridged = "bridged"
	// TopicMissing: the topic does not exist (never created, or deleted).
	TopicMissing = "missing"
	// TopicNotAuthorized: the user may not describe or read the topic.
	TopicNotAuthorized = "not authorized"
	// TopicError: the brokers answered another error for the topic.
	TopicError = "error"
)

// TopicStatus is the state of one configured topic, as Ingest.Stats reports
// it.
type TopicStatus struct {
	Topic string
	// State is TopicBridged, TopicMissing, TopicNotAuthorized or TopicError.
	State string
	// Err says why a topic is not bridged ("" when it is).
	Err string
	// Partitions is the topic's partition count (0 when unknown).
	Partitions int
	// ID is the topic's Kafka topic ID in hex ("" when unknown).
	ID string
	// Since is when the topic entered its state.
	Since time.Time
}

// topicWatch holds the state of the configured topics. Safe for concurrent
// use.
type topicWatch struct {
	mu     sync.Mutex
	topics map[string]*watchedTopic
	order  []string
	// changed is closed (and replaced) whenever a topic's state or
	// partition count changes.
	changed chan struct{}
}

type watchedTopic struct {
	TopicStatus
}

func newTopicWatch(topics []string) *topicWatch {
	w := &topicWatch{topics: map[string]*watchedTopic{}, changed: make(chan struct{})}
	for _, t := range topics {
		if _, dup := w.topics[t]; dup {
			continue
		}
		w.topics[t] = &watchedTopic{TopicStatus: TopicStatus{Topic: t, State: TopicError, Err: "not checked yet"}}
		w.order = append(w.order, t)
	}
	return w
}

// bridged returns the topics to subscribe to, sorted.
func (w *topicWatch) bridged() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, t := range w.order {
		if w.topics[t].State == TopicBridged {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out
}

// partitions returns the partition count of a bridged topic (0 otherwise).
func (w *topicWatch) partitions(topic string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t, ok := w.topics[topic]; ok && t.State == TopicBridged {
		return t.Partitions
	}
	return 0
}

// state returns the topic's state ("" for a topic not configured).
func (w *topicWatch) state(topic string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t, ok := w.topics[topic]; ok {
		return t.State
	}
	return ""
}

// id returns the topic ID the brokers gave last (zero when unknown).
func (w *topicWatch) id(topic string) topicID {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t, ok := w.topics[topic]; ok {
		return parseTopicID(t.ID)
	}
	return topicID{}
}

// wait returns a channel closed at the next change.
func (w *topicWatch) wait() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

func (w *topicWatch) list() []TopicStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]TopicStatus, 0, len(w.order))
	for _, t := range w.order {
		out = append(out, w.topics[t].TopicStatus)
	}
	return out
}

// pollTopics reads the configured topics' metadata once and updates their
// states, logging every change. readable is asked for a topic that exists
// and was not bridged: whether the user may read it (a describe-only ACL
// lets the metadata through). A failed metadata request changes nothing.
func (in *Ingest) pollTopics(ctx context.Context) error {
	metas, err := in.metadata(ctx, in.topics.order)
	if err != nil {
		return err
	}
	// Check READ outside the lock: it is a fetch.
	readErr := map[string]error{}
	for _, m := range metas {
		in.topics.mu.Lock()
		state := in.topics.topics[m.Name].State
		in.topics.mu.Unlock()
		if m.Err == nil && state != TopicBridged {
			readErr[m.Name] = in.readable(ctx, m.Name)
		}
	}
	in.topics.apply(in, metas, readErr, false)
	return nil
}

// learn applies what another request found about some topics (the check
// before a commit): a bridged topic that is gone is dropped at once, a new
// topic ID is taken (its partitions stall, topicid.go). A topic not bridged
// is left to pollTopics, which checks READ.
func (w *topicWatch) learn(in *Ingest, metas []topicMeta) {
	w.apply(in, metas, nil, true)
}

// confirmTopics reads the configured topics again now, at the first sign
// that one is gone (a fetch or a commit answered UNKNOWN_TOPIC_OR_PARTITION),
// rather than at the next metadata poll: a topic that does not exist is
// dropped from the subscription before the group can rebalance with it.
func (in *Ingest) confirmTopics(ctx context.Context) {
	if err := in.pollTopics(ctx); err != nil && ctx.Err() == nil {
		in.counters.kafkaErrs.Add(1)
		in.log.Warn("reading topic metadata failed; retrying at the next poll", "err", err)
	}
}

// apply updates the topics' states from metas (see pollTopics and learn).
//
// A bridged topic is dropped at the first answer that says it does not
// exist: a member of the group that still subscribes to it when the group
// rebalances has kafka-go's group leader ask for its partitions with a
// metadata request that allows auto-creation (Conn.ReadPartitions), which a
// broker with auto.create.topics.enable=true (Kafka's default) would obey —
// creating it again as a new topic (issue 7 point 1). The group's
// connections clear that flag (autocreate.go); dropping the topic at once
// also spares the group the rebalances of a subscription to nothing.
func (w *topicWatch) apply(in *Ingest, metas []topicMeta, readErr map[string]error, partial bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	changed := false
	now := time.Now()
	set := func(t *watchedTopic, state string, err error) {
		e := ""
		if err != nil {
			e = err.Error()
		}
		if t.State == state && t.Err == e {
			return
		}
		was := t.State
		t.State, t.Err, t.Since = state, e, now
		changed = true
		log := in.log.With("topic", t.Topic, "partitions", t.Partitions)
		switch state {
		case TopicBridged:
			log.Info("topic found: bridging it", "was", was)
		case TopicMissing:
			if was == TopicBridged {
				log.Error("topic deleted: no longer bridging it; its streams stay in Redis for the workers, and it is picked up again if it is created again (as a new topic: see the runbook for a recreated topic)")
			} else {
				log.Error("topic does not exist: not bridging it, the other topics go on; it is picked up once created")
			}
		case TopicNotAuthorized:
			log.Error("topic authorization failed: not bridging it, the other topics go on; grant the user READ on it (docs/operations.md)", "err", e)
		default:
			log.Error("topic metadata error: not bridging it, the other topics go on", "err", e)
		}
	}
	for _, m := range metas {
		t, ok := w.topics[m.Name]
		if !ok || partial && t.State != TopicBridged {
			continue
		}
		if !m.ID.IsZero() && t.ID != m.ID.String() {
			if t.ID != "" {
				in.log.Warn("topic has a new topic ID: it was deleted and created again", "topic", t.Topic, "was", t.ID, "now", m.ID.String())
			}
			t.ID = m.ID.String()
		}
		switch {
		case m.Err == nil:
			if partial {
				continue
			}
			if rerr := readErr[m.Name]; rerr != nil {
				t.Partitions = m.Partitions
				set(t, TopicNotAuthorized, rerr)
				continue
			}
			if t.State == TopicBridged && t.Partitions != m.Partitions {
				in.log.Info("topic partitions changed", "topic", t.Topic, "from", t.Partitions, "to", m.Partitions)
				changed = true
			}
			t.Partitions = m.Partitions
			set(t, TopicBridged, nil)
		case errors.Is(m.Err, kafka.UnknownTopicOrPartition):
			t.Partitions = 0
			set(t, TopicMissing, m.Err)
		case errors.Is(m.Err, kafka.TopicAuthorizationFailed):
			set(t, TopicNotAuthorized, m.Err)
		default:
			if t.State == TopicBridged || partial {
				continue // transient (a leader election): keep it
			}
			set(t, TopicError, m.Err)
		}
	}
	if changed {
		close(w.changed)
		w.changed = make(chan struct{})
	}
}

// checkSubscription runs right before this member sends a JoinGroup request
// (from the group balancer's UserData): it reads the configured topics, and
// fails the join when a topic of the subscription (topics) is no longer
// bridged. A member that joined with a deleted topic would have the group's
// leader ask for that topic's partitions, with auto-creation allowed when
// the leader is not this kbridge (an older one, during a rolling upgrade:
// see autocreate.go), and a broker with auto.create.topics.enable=true would
// create it again (issue 7 point 1): the member joins again, without it
// (runGroup). When the brokers cannot be asked, the join goes on as before.
func (in *Ingest) checkSubscription(ctx context.Context, topics []string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := in.pollTopics(ctx); err != nil {
		if ctx.Err() == nil {
			in.log.Warn("reading topic metadata before joining the group failed; joining anyway", "err", err)
		}
		return nil
	}
	bridged := in.topics.bridged()
	var gone []string
	for _, t := range topics {
		if !slices.Contains(bridged, t) {
			gone = append(gone, t)
		}
	}
	if len(gone) > 0 {
		return fmt.Errorf("not joining the group with topics that are not bridged any more (%s): joining again without them", strings.Join(gone, ","))
	}
	return nil
}

// checkAutoCreate warns when a broker creates topics on a metadata request
// (auto.create.topics.enable=true, Kafka's default): any client that asks
// for a deleted topic's metadata with auto-creation allowed (kafka-go's
// group leader does, which autocreate.go defuses for this ingest's group;
// producers, other consumers and tools may) brings it back at once, as a
// new, empty topic (with a new topic ID: its partitions stall,
// docs/operations.md "A recreated topic"). It reads each broker's setting
// once, at start; a broker that does not say (no DESCRIBE_CONFIGS on the
// cluster) is not reported.
func (in *Ingest) checkAutoCreate(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	md, err := in.client.Metadata(ctx, &kafka.MetadataRequest{Topics: in.topics.order})
	if err != nil {
		in.log.Debug("could not read the brokers to check auto.create.topics.enable", "err", err)
		return
	}
	var on []string
	for i, b := range md.Brokers {
		if i == 16 {
			break // enough to tell a cluster's setting
		}
		res, err := in.client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
			ResourceType: kafka.ResourceTypeBroker, ResourceName: strconv.Itoa(b.ID), ConfigNames: []string{"auto.create.topics.enable"}}}})
		if err != nil {
			in.log.Debug("could not read auto.create.topics.enable", "broker", b.ID, "err", err)
			continue
		}
		for _, r := range res.Resources {
			for _, e := range r.ConfigEntries {
				if r.Error == nil && e.ConfigName == "auto.create.topics.enable" && e.ConfigValue == "true" {
					on = append(on, strconv.Itoa(b.ID))
				}
			}
		}
	}
	if len(on) > 0 {
		in.log.Warn("the Kafka brokers create topics on demand (auto.create.topics.enable=true): a bridged topic that is deleted is created again, empty and as a new topic, by any client that asks for it (a producer, another consumer); set auto.create.topics.enable=false (docs/operations.md, \"A missing topic\")",
			"brokers", strings.Join(on, ","))
	}
}

// readable tells whether the user may read topic: a fetch of partition 0 at
// its log end, which returns nothing but says TOPIC_AUTHORIZATION_FAILED
// when the user may describe the topic but not read it. Other errors (no
// leader yet) count as readable: the partitions retry.
func (in *Ingest) readable(ctx context.Context, topic string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := in.client.Fetch(ctx, &kafka.FetchRequest{Topic: topic, Partition: 0, Offset: kafka.LastOffset,
		MinBytes: 1, MaxBytes: 1024, MaxWait: 10 * time.Millisecond})
	if err == nil {
		err = res.Error
	}
	if errors.Is(err, kafka.TopicAuthorizationFailed) {
		return err
	}
	return nil
}

// watchTopics polls the topics every MetadataInterval until ctx is done,
// and reminds, once a minute, which configured topics are not bridged.
func (in *Ingest) watchTopics(ctx context.Context) {
	in.checkAutoCreate(ctx)
	t := time.NewTicker(in.cfg.MetadataInterval)
	defer t.Stop()
	var warned time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := in.pollTopics(ctx); err != nil {
			if ctx.Err() == nil {
				in.counters.kafkaErrs.Add(1)
				in.log.Warn("reading topic metadata failed; retrying", "err", err)
			}
			continue
		}
		if time.Since(warned) >= time.Minute {
			var not []string
			for _, s := range in.topics.list() {
				if s.State != TopicBridged {
					not = append(not, s.Topic+" ("+s.State+")")
				}
			}
			if len(not) > 0 {
				in.log.Warn("configured topics not bridged", "topics", not)
				warned = time.Now()
			}
		}
	}
}

// leaderView wraps the group balancers to learn, per generation, whether
// this member led the group and which partitions it assigned: kafka-go calls
// UserData for every join request and AssignGroups on the leader only.
type leaderView struct {
	mu         sync.Mutex
	partitions map[string]int // nil: not the leader of the last join
	// check runs before each join request (nil: none); an error fails
	// the join.
	check func() error
}

// newLeaderView returns the view of a member subscribed to topics: before
// each of its join requests, it checks that they are all still bridged
// (checkSubscription); when one is not, the join is not sent and rejoin is
// called (runGroup's cancel: Run joins again with the topics bridged now).
func (in *Ingest) newLeaderView(ctx context.Context, rejoin func(), topics []string) *leaderView {
	return &leaderView{check: func() error {
		err := in.checkSubscription(ctx, topics)
		if err != nil {
			in.log.Info("the topics to bridge changed before joining the group: joining again without the ones gone", "group", in.cfg.Group, "err", err)
			rejoin()
		}
		return err
	}}
}

// balancers returns the group balancers (range, then round-robin) wrapped
// in the view; kafka-go asks each for its UserData at every join, and the
// first one runs the check.
func (v *leaderView) balancers() []kafka.GroupBalancer {
	return []kafka.GroupBalancer{viewBalancer{kafka.RangeGroupBalancer{}, v, true},
		viewBalancer{kafka.RoundRobinGroupBalancer{}, v, false}}
}

// take returns the partition counts this member assigned as leader in the
// last join, or nil when it did not lead.
func (v *leaderView) take() map[string]int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.partitions
}

type viewBalancer struct {
	kafka.GroupBalancer
	view  *leaderView
	first bool // runs the view's check
}

func (b viewBalancer) UserData() ([]byte, error) {
	if b.first && b.view.check != nil {
		if err := b.view.check(); err != nil {
			return nil, err
		}
	}
	b.view.mu.Lock()
	b.view.partitions = nil
	b.view.mu.Unlock()
	return b.GroupBalancer.UserData()
}

func (b viewBalancer) AssignGroups(members []kafka.GroupMember, partitions []kafka.Partition) kafka.GroupMemberAssignments {
	counts := map[string]int{}
	for _, p := range partitions {
		counts[p.Topic]++
	}
	b.view.mu.Lock()
	b.view.partitions = counts
	b.view.mu.Unlock()
	return b.GroupBalancer.AssignGroups(members, partitions)
}

// watchPartitions runs for a generation this member leads: it returns —
// ending the generation, so that the group rebalances and the leader
// assigns again — when a topic it assigned has another number of partitions
// now. Topics it did not see are left alone: their metadata had an error
// when it assigned (another member's missing topic), and returning for them
// would end every generation.
func (in *Ingest) watchPartitions(ctx context.Context, assigned map[string]int) {
	for {
		changed := in.topics.wait()
		for topic, n := range assigned {
			if now := in.topics.partitions(topic); now > 0 && now != n {
				in.log.Info("partitions of a topic changed: ending the generation so that the group assigns them (this member leads it)",
					"topic", topic, "from", n, "to", now)
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
