package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/internal/dlqkafka"
	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/worker"
)

// dlqArgs is what "kbridge dlq <verb>" was asked, once its flags and
// arguments were checked.
type dlqArgs struct {
	filter worker.Filter
	// kafka is true when the command reads the dead-letter topics
	// (--from-kafka, or a Kafka REF among the arguments).
	kafka bool
}

// dlqProblems checks every flag and argument of "kbridge dlq <verb>" (list,
// show, replay or delete), the Redis flags, and the Kafka flags where the
// command reads Kafka, and returns every problem found: one exit-2 message
// then lists them all, as "kbridge ingest" does, instead of the first one
// per run.
func dlqProblems(c *cli.Context, verb string) (dlqArgs, []string) {
	var probs []string
	add := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	a := dlqArgs{filter: worker.Filter{Topic: c.String("topic"), Group: c.String("group")}}
	f := &a.filter
	refs := c.Args().Slice()
	all := c.Bool("all")
	fromKafka := c.Bool("from-kafka") // false where the command has no such flag

	// The filters (list, replay, delete).
	if f.Topic != "" && !kafkaTopicName(f.Topic) {
		add("--topic %q is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)", f.Topic)
	}
	if c.IsSet("partition") {
		if f.Topic == "" {
			add("--partition needs --topic")
		}
		f.Partitions = c.IntSlice("partition")
		for _, p := range f.Partitions {
			if p < 0 {
				add("--partition %d must not be negative", p)
			}
		}
	}

	// The arguments.
	switch verb {
	case "list":
		if len(refs) > 0 {
			add("list takes no arguments, got %q (filter with --topic, --partition, --group)", refs)
		}
		if f.Limit = c.Int("limit"); f.Limit < 0 {
			add("--limit %d must not be negative (0 = all)", f.Limit)
		}
	case "show":
		if len(refs) == 0 {
			add("give one or more REFs, as \"kbridge dlq list\" prints them")
		}
	default: // replay, delete
		switch {
		case all && len(refs) > 0:
			add("give REFs or --all, not both")
		case !all && len(refs) == 0:
			add("give the REFs to %s (see \"kbridge dlq list\"), or --all", verb)
		case !all && (f.Topic != "" || f.Group != "" || c.IsSet("partition")):
			add("--topic, --partition and --group go with --all")
		}
		if fromKafka && !all && len(refs) > 0 {
			add("--from-kafka goes with --all; give Kafka REFs (<dead-letter topic>:<partition>@<offset>) without it")
		}
	}
	kafkaRefs, flagsAfter := false, []string{}
	for _, ref := range refs {
		if verb == "list" {
			break // reported above
		}
		var err error
		if dlqkafka.IsRef(ref) {
			kafkaRefs = true
			if verb != "show" && verb != "replay" {
				add("%s is a dead letter in Kafka: only show and replay take those (Kafka keeps it until its retention)", ref)
				continue
			}
			_, err = dlqkafka.ParseRef(ref)
		} else {
			_, _, _, err = worker.ParseRef(ref)
		}
		switch {
		case err != nil && strings.HasPrefix(ref, "-"):
			flagsAfter = append(flagsAfter, ref) // urfave/cli reads no flag after the first argument
		case err != nil:
			probs = append(probs, err.Error())
		}
	}
	if len(flagsAfter) > 0 {
		add("%s after the first REF: not read as flags; flags go before the REFs (kbridge dlq %s %s ... REF...)",
			strings.Join(flagsAfter, " "), verb, flagsAfter[0])
	}
	a.kafka = fromKafka || (kafkaRefs && (verb == "show" || verb == "replay"))
	if verb == "replay" && c.Bool("again") && !a.kafka {
		add("--again is for dead letters read from Kafka (--from-kafka --all, or Kafka REFs): a dead letter in Redis is replayed whatever happened before")
	}

	// Redis, always; Kafka where it is read.
	probs = append(probs, redisProblems(c)...)
	if a.kafka {
		kafkaSecurity(c, &probs)
		if len(splitList(c.StringSlice("brokers"))) == 0 {
			add("no Kafka brokers (--brokers)")
		}
		tmpl, topic := c.String("dlq-topic"), f.Topic
		if topic == "" || !kafkaTopicName(topic) {
			topic = "orders" // an example: the topics come from the registry
		}
		if d := wire.DLQTopic(tmpl, topic); !kafkaTopicName(d) {
			add("--dlq-topic %q gives %q for topic %q: not a valid Kafka topic name", tmpl, d, topic)
		}
	}
	return a, probs
}

// dlqFlagsError is the exit-2 error of "kbridge dlq <verb>" listing probs,
// or nil when there is none.
func dlqFlagsError(verb string, probs []string) error {
	if len(probs) == 0 {
		return nil
	}
	return cli.Exit(fmt.Sprintf("invalid dlq %s flags or arguments:\n  - %s", verb, strings.Join(probs, "\n  - ")), 2)
}

// kafkaTopicName reports whether t is a valid Kafka topic name (Kafka's
// own rule, as the ingest checks --topics).
func kafkaTopicName(t string) bool {
	if t == "" || len(t) > 249 || t == "." || t == ".." {
		return false
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}
