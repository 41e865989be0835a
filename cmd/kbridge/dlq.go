package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/internal/dlqkafka"
	"github.com/kbridge/kbridge/internal/wire"
	"github.com/kbridge/kbridge/worker"
)

// dlqCommand is "kbridge dlq": list, show, replay and delete dead letters,
// in Redis or, with --from-kafka, in the dead-letter topics.
func dlqCommand() *cli.Command {
	filterFlags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "topic", EnvVars: []string{"KBRIDGE_DLQ_FILTER_TOPIC"}, Usage: "only dead letters of this topic"},
			&cli.IntSliceFlag{Name: "partition", EnvVars: []string{"KBRIDGE_DLQ_FILTER_PARTITION"}, Usage: "only these partitions (with --topic)"},
			&cli.StringFlag{Name: "group", EnvVars: []string{"KBRIDGE_DLQ_FILTER_GROUP"}, Usage: "only dead letters of this worker group"},
		}
	}
	jsonFlag := &cli.BoolFlag{Name: "json", EnvVars: []string{"KBRIDGE_DLQ_JSON"}, Usage: "print JSON, one object per line"}
	allFlag := &cli.BoolFlag{Name: "all", EnvVars: []string{"KBRIDGE_DLQ_ALL"}, Usage: "every dead letter the filters select (instead of REFs)"}
	fromKafka := &cli.BoolFlag{Name: "from-kafka", EnvVars: []string{"KBRIDGE_DLQ_FROM_KAFKA"},
		Usage: "read the dead-letter topics in Kafka (--dlq-topic) instead of Redis: what a Redis that lost its data still has there"}
	return &cli.Command{
		Name:  "dlq",
		Usage: "list, show, replay or delete dead letters",
		Description: `A record whose handler failed on every allowed delivery (or that is malformed,
or that a handler rejected as permanent) is written to its partition's
dead-letter stream <prefix>:{<topic>:<partition>}:dlq with the reason and
the last error, then acknowledged so that commits move on. Each dead letter is
named by a REF, <topic>:<partition>/<entry id>, as "list" prints it.

The ingest copies every dead letter to the Kafka topic --dlq-topic
(<topic>.dlq by default) and commits no offset past a dead letter before
Kafka has it, so a Redis that loses its data loses no dead letter. One over
the ingest's --dlq-max-bytes goes to Kafka as a stub: its coordinates and
why, not the record ("stub only" in "list"). Dead letters stay in Redis too,
until "delete". With --from-kafka, "list" reads the dead-letter topics
instead; a dead letter there is named by a Kafka REF,
<dead-letter topic>:<partition>@<offset>, which "show" and "replay" take too.

"replay" moves dead letters to the partition's replay stream, where the
workers of the group that gave up on them process them again. "replay" and
"delete" take a dead letter out of Redis only when Kafka has it in full:
not one the ingest has not exported yet, nor one whose export state is
unknown (no ingest exporting dead letters has looked at its partition), nor
a stub; each is named with the reason, and the command exits 1 (--force:
take it out anyway). One from Kafka is replayed from Redis if it is still
there, and is not replayed twice (--again: once more).

Examples:
   kbridge dlq list
   kbridge dlq list --topic orders --json
   kbridge dlq show orders:3/1718000000000-0
   kbridge dlq replay orders:3/1718000000000-0
   kbridge dlq replay --all --topic orders
   kbridge dlq delete --all --group billing
   kbridge dlq list --from-kafka --topic orders --brokers kafka:9092
   kbridge dlq show orders.dlq:3@17 --brokers kafka:9092
   kbridge dlq replay --from-kafka --all --topic orders --brokers kafka:9092`,
		Subcommands: []*cli.Command{
			{
				Name:      "list",
				Usage:     "list dead letters, oldest first per partition",
				UsageText: "kbridge dlq list [--topic T] [--partition P]... [--group G] [--limit N] [--json] [--from-kafka [--brokers B] [--dlq-topic TEMPLATE]]",
				Flags: append(append(filterFlags(), jsonFlag, fromKafka,
					&cli.IntFlag{Name: "limit", Value: 100, EnvVars: []string{"KBRIDGE_DLQ_LIMIT"}, Usage: "at most this many (0 = all)"}),
					dlqKafkaFlags()...),
				Action: dlqList,
			},
			{
				Name:      "show",
				Usage:     "show dead letters in full: record, headers, reason, error",
				UsageText: "kbridge dlq show [--json] [--brokers B] REF...\n   (flags before the REFs; REF: <topic>:<partition>/<id> in Redis, <dead-letter topic>:<partition>@<offset> in Kafka)",
				Flags:     append([]cli.Flag{jsonFlag}, dlqKafkaFlags()...),
				Action:    dlqShow,
			},
			{
				Name:  "replay",
				Usage: "hand dead letters back to the workers",
				UsageText: "kbridge dlq replay [--force] [--again] REF...   (flags before the REFs)\n   kbridge dlq replay --all [--topic T] [--partition P]... [--group G] [--force]" +
					"\n   kbridge dlq replay --from-kafka --all [--topic T] [--partition P]... [--group G] [--again]",
				Flags: append(append(filterFlags(), allFlag, fromKafka,
					&cli.BoolFlag{Name: "force", EnvVars: []string{"KBRIDGE_DLQ_FORCE"},
						Usage: "also replay dead letters Kafka has no full copy of (not exported yet, export state unknown, a stub): if Redis loses them before the workers are done, they are gone"},
					&cli.BoolFlag{Name: "again", EnvVars: []string{"KBRIDGE_DLQ_AGAIN"},
						Usage: "replay dead letters from Kafka that were replayed before (within 30 days)"}),
					dlqKafkaFlags()...),
				Action: func(c *cli.Context) error { return dlqMove(c, "replay") },
			},
			{
				Name:      "delete",
				Usage:     "delete dead letters from Redis once Kafka has them (Kafka keeps its copy until its retention)",
				UsageText: "kbridge dlq delete [--force] REF...   (flags before the REFs)\n   kbridge dlq delete --all [--topic T] [--partition P]... [--group G] [--force]",
				Flags: append(filterFlags(), allFlag,
					&cli.BoolFlag{Name: "force", EnvVars: []string{"KBRIDGE_DLQ_FORCE"},
						Usage: "also delete dead letters Kafka has no full copy of (not exported yet, export state unknown, a stub): their records are then gone for good"}),
				Action: func(c *cli.Context) error { return dlqMove(c, "delete") },
			},
		},
	}
}

func dlqList(c *cli.Context) error {
	a, probs := dlqProblems(c, "list")
	if err := dlqFlagsError("list", probs); err != nil {
		return err
	}
	f := a.filter
	rdb, err := newRedis(c)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if c.Bool("from-kafka") {
		return dlqListKafka(c, rdb, f)
	}
	dls, err := worker.ListDeadLetters(c.Context, rdb, c.String("prefix"), f)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	states := exportStates(c.Context, rdb, dls)
	out := c.App.Writer
	if c.Bool("json") {
		return printJSON(out, dls, states)
	}
	if len(dls) == 0 {
		fmt.Fprintln(out, "no dead letters")
		return nil
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REF\tOFFSET\tGROUP\tDELIVERIES\tREASON\tDEAD-LETTERED\tIN KAFKA\tERROR")
	for _, d := range dls {
		off := strconv.FormatInt(d.Offset, 10)
		if d.Malformed {
			off = "?"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", d.Ref, off, d.Info.Group, d.Info.Deliveries, d.Info.Reason,
			d.Info.Time.Format(time.RFC3339), states[d.Ref].state, truncate(oneLine(d.Info.Error), 80))
	}
	return tw.Flush()
}

func (s exportState) String() string {
	switch s {
	case exported:
		return "yes"
	case notExported:
		return "not yet"
	case exportedStub:
		return "stub only"
	}
	return "unknown"
}

// kafkaCopy is the export state for --json: "full", "stub", "none" or
// "unknown".
func (s exportState) kafkaCopy() string {
	switch s {
	case exported:
		return "full"
	case notExported:
		return "none"
	case exportedStub:
		return "stub"
	}
	return "unknown"
}

// exportStates reads the export state of each dead letter (unknown where
// Redis does not answer).
func exportStates(ctx context.Context, rdb redis.UniversalClient, dls []worker.DeadLetter) map[string]exportInfo {
	out := map[string]exportInfo{}
	for _, d := range dls {
		if st, err := deadLetterExportState(ctx, rdb, d); err == nil {
			out[d.Ref] = st
		}
	}
	return out
}

// dlqListKafka is "list --from-kafka".
func dlqListKafka(c *cli.Context, rdb redis.UniversalClient, f worker.Filter) error {
	kc, closeKafka, err := newKafkaClient(c)
	if err != nil {
		return err
	}
	defer closeKafka()
	dls, other, err := listKafkaDeadLetters(c.Context, c, rdb, kc, f)
	if err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			return err
		}
		return cli.Exit(err.Error(), 1)
	}
	if other > 0 {
		fmt.Fprintf(c.App.ErrWriter, "%d message(s) of the dead-letter topics are not kbridge dead letters: left out\n", other)
	}
	out := c.App.Writer
	if c.Bool("json") {
		return printKafkaJSON(out, dls)
	}
	if len(dls) == 0 {
		fmt.Fprintln(out, "no dead letters in Kafka")
		return nil
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REF\tRECORD\tGROUP\tDELIVERIES\tREASON\tDEAD-LETTERED\tIN REDIS\tERROR")
	for _, d := range dls {
		rec := fmt.Sprintf("%s:%d@%d", d.Topic, d.Partition, d.Offset)
		if d.Malformed != "" {
			rec = fmt.Sprintf("%s:%d@?", d.Topic, d.Partition)
		}
		if d.Stub != "" {
			rec += " (stub)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", d.Ref, rec, d.Info.Group, d.Info.Deliveries, d.Info.Reason,
			d.Info.Time.Format(time.RFC3339), inRedisText(d), truncate(oneLine(d.Info.Error), 80))
	}
	return tw.Flush()
}

func inRedisText(d kafkaDeadLetter) string {
	switch {
	case d.inRedis == nil:
		return "?"
	case *d.inRedis:
		return d.KafkaDeadLetter.Ref
	}
	return "no"
}

func dlqShow(c *cli.Context) error {
	if _, probs := dlqProblems(c, "show"); len(probs) > 0 {
		return dlqFlagsError("show", probs)
	}
	rdb, err := newRedis(c)
	if err != nil {
		return err
	}
	defer rdb.Close()
	redisRefs, kafkaRefs := splitRefs(c.Args().Slice())
	var dls []worker.DeadLetter
	for _, ref := range redisRefs {
		d, err := worker.GetDeadLetter(c.Context, rdb, c.String("prefix"), ref)
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		dls = append(dls, d)
	}
	var kdls []kafkaDeadLetter
	if len(kafkaRefs) > 0 {
		kc, closeKafka, err := newKafkaClient(c)
		if err != nil {
			return err
		}
		defer closeKafka()
		if kdls, err = getKafkaDeadLetters(c.Context, rdb, c.String("prefix"), kc, kafkaRefs); err != nil {
			return err
		}
	}
	states := exportStates(c.Context, rdb, dls)
	out := c.App.Writer
	if c.Bool("json") {
		if err := printJSON(out, dls, states); err != nil {
			return err
		}
		return printKafkaJSON(out, kdls)
	}
	for i, d := range dls {
		if i > 0 {
			fmt.Fprintln(out)
		}
		fmt.Fprintf(out, "ref:          %s\n", d.Ref)
		fmt.Fprintf(out, "dlq stream:   %s (entry %s)\n", d.DLQ, d.ID)
		if x := states[d.Ref]; x.state == exportedStub {
			fmt.Fprintf(out, "in Kafka:     stub only: %s\n", x.stub)
		} else {
			fmt.Fprintf(out, "in Kafka:     %s\n", x.state)
		}
		showInfo(out, d.Info)
		if d.Malformed {
			fmt.Fprintln(out, "fields (malformed entry):")
			for k, v := range d.Fields {
				fmt.Fprintf(out, "  %s = %s\n", k, bytesText([]byte(v)))
			}
			continue
		}
		showRecord(out, d.Topic, d.Partition, d.Offset, d.Key, d.Value, d.Headers)
	}
	for i, d := range kdls {
		if i > 0 || len(dls) > 0 {
			fmt.Fprintln(out)
		}
		fmt.Fprintf(out, "ref:          %s\n", d.Ref)
		fmt.Fprintf(out, "in Redis:     %s\n", inRedisText(d))
		if d.Stub != "" {
			fmt.Fprintf(out, "stub:         %s\n", d.Stub)
		}
		showInfo(out, d.Info)
		if d.Malformed != "" {
			fmt.Fprintf(out, "malformed:    %s\n", d.Malformed)
			fmt.Fprintln(out, "fields:")
			for k, v := range d.Fields {
				fmt.Fprintf(out, "  %s = %s\n", k, bytesText([]byte(v)))
			}
			continue
		}
		if d.Stub != "" {
			fmt.Fprintf(out, "record:       %s/%d offset %d (not in Kafka: see stub)\n", d.Topic, d.Partition, d.Offset)
			continue
		}
		hs := make([]worker.Header, len(d.Headers))
		for i, h := range d.Headers {
			hs[i] = worker.Header{Key: h.Key, Value: h.Value}
		}
		showRecord(out, d.Topic, d.Partition, d.Offset, d.Key, d.Value, hs)
	}
	return nil
}

func showInfo(out io.Writer, i wire.DLQInfo) {
	fmt.Fprintf(out, "read from:    %s (entry %s)\n", i.Stream, i.ID)
	fmt.Fprintf(out, "reason:       %s\n", i.Reason)
	fmt.Fprintf(out, "error:        %s\n", i.Error)
	fmt.Fprintf(out, "group:        %s\n", i.Group)
	fmt.Fprintf(out, "consumer:     %s\n", i.Consumer)
	fmt.Fprintf(out, "deliveries:   %d\n", i.Deliveries)
	fmt.Fprintf(out, "dead-lettered: %s\n", i.Time.Format(time.RFC3339Nano))
}

func showRecord(out io.Writer, topic string, partition int, offset int64, key, value []byte, hs []worker.Header) {
	fmt.Fprintf(out, "record:       %s/%d offset %d\n", topic, partition, offset)
	fmt.Fprintf(out, "key:          %s\n", bytesText(key))
	fmt.Fprintf(out, "value:        %s\n", bytesText(value))
	for _, h := range hs {
		fmt.Fprintf(out, "header:       %s = %s\n", h.Key, bytesText(h.Value))
	}
}

// splitRefs separates Redis references from Kafka ones.
func splitRefs(refs []string) (redisRefs, kafkaRefs []string) {
	for _, r := range refs {
		if dlqkafka.IsRef(r) {
			kafkaRefs = append(kafkaRefs, r)
		} else {
			redisRefs = append(redisRefs, r)
		}
	}
	return redisRefs, kafkaRefs
}

// dlqMove replays or deletes the dead letters named by REF arguments, or
// with --all those the filters select.
func dlqMove(c *cli.Context, verb string) error {
	a, probs := dlqProblems(c, verb)
	if err := dlqFlagsError(verb, probs); err != nil {
		return err
	}
	f, all := a.filter, c.Bool("all")
	fromKafka := verb == "replay" && c.Bool("from-kafka")
	rdb, err := newRedis(c)
	if err != nil {
		return err
	}
	defer rdb.Close()
	prefix := c.String("prefix")
	redisRefs, kafkaRefs := splitRefs(c.Args().Slice())
	var dls []worker.DeadLetter
	if all && !fromKafka {
		if dls, err = worker.ListDeadLetters(c.Context, rdb, prefix, f); err != nil {
			return cli.Exit(err.Error(), 1)
		}
	} else {
		for _, ref := range redisRefs {
			d, err := worker.GetDeadLetter(c.Context, rdb, prefix, ref)
			if err != nil {
				return cli.Exit(err.Error(), 1)
			}
			dls = append(dls, d)
		}
	}
	// Take out of Redis only what Kafka has in full (--force: anyway).
	report := func(line string) { fmt.Fprintln(c.App.ErrWriter, line) }
	force := c.Bool("force")
	ready, held := dls[:0:0], 0
	for _, d := range dls {
		x, err := deadLetterExportState(c.Context, rdb, d)
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		if why := unsafeToRemove(d, x); why != "" && !force {
			report(fmt.Sprintf("%s: %s: not %s; --force to %s it anyway", d.Ref, why, pastTense(verb), verb))
			held++
			continue
		}
		ready = append(ready, d)
	}
	var n int
	if verb == "delete" {
		if n, err = worker.DeleteDeadLetters(c.Context, rdb, ready); err != nil {
			return cli.Exit(fmt.Sprintf("delete: %v (%d done)", err, n), 1)
		}
		fmt.Fprintf(c.App.Writer, "deleted %d dead letter(s)", n)
		if held > 0 {
			fmt.Fprintf(c.App.Writer, "; %d without a full copy in Kafka: left alone", held)
		}
		fmt.Fprintln(c.App.Writer)
		if held > 0 {
			return cli.Exit("", 1)
		}
		return nil
	}
	if n, err = worker.ReplayDeadLetters(c.Context, rdb, ready); err != nil {
		return cli.Exit(fmt.Sprintf("replay: %v (%d done)", err, n), 1)
	}
	for _, d := range ready {
		if err := markReplayed(c.Context, rdb, d.Stream, []string{d.Ref}); err != nil {
			return cli.Exit(err.Error(), 1)
		}
	}
	skipped := 0
	if fromKafka || len(kafkaRefs) > 0 {
		kc, closeKafka, err := newKafkaClient(c)
		if err != nil {
			return err
		}
		defer closeKafka()
		var kdls []kafkaDeadLetter
		if fromKafka {
			var other int
			kdls, other, err = listKafkaDeadLetters(c.Context, c, rdb, kc, f)
			if other > 0 {
				report(fmt.Sprintf("%d message(s) of the dead-letter topics are not kbridge dead letters: left out", other))
			}
		} else {
			kdls, err = getKafkaDeadLetters(c.Context, rdb, prefix, kc, kafkaRefs)
		}
		if err != nil {
			var ec cli.ExitCoder
			if errors.As(err, &ec) {
				return err
			}
			return cli.Exit(err.Error(), 1)
		}
		k, s, h, err := replayKafkaDeadLetters(c.Context, rdb, prefix, kdls, c.Bool("again"), force, report)
		n, skipped, held = n+k, s, held+h
		if err != nil {
			return cli.Exit(fmt.Sprintf("replay: %v (%d done)", err, n), 1)
		}
	}
	fmt.Fprintf(c.App.Writer, "replayed %d dead letter(s)", n)
	if held+skipped > 0 {
		fmt.Fprintf(c.App.Writer, "; %d without a full copy in Kafka, %d replayed before: left alone", held, skipped)
	}
	fmt.Fprintln(c.App.Writer)
	if held > 0 {
		return cli.Exit("", 1)
	}
	return nil
}

func pastTense(verb string) string {
	if verb == "delete" {
		return "deleted"
	}
	return verb + "ed"
}

type deadLetterJSON struct {
	Ref        string            `json:"ref"`
	DLQ        string            `json:"dlq"`
	ID         string            `json:"id"`
	Topic      string            `json:"topic"`
	Partition  int               `json:"partition"`
	Offset     int64             `json:"offset"`
	Key        []byte            `json:"key"`   // base64; null for a null key
	Value      []byte            `json:"value"` // base64; null for a null value
	Headers    []worker.Header   `json:"headers,omitempty"`
	Malformed  bool              `json:"malformed,omitempty"`
	Fields     map[string]string `json:"fields,omitempty"`
	Reason     string            `json:"reason"`
	Error      string            `json:"error"`
	Group      string            `json:"group"`
	Consumer   string            `json:"consumer"`
	Deliveries int64             `json:"deliveries"`
	ReadFrom   string            `json:"read_from"`
	EntryID    string            `json:"entry_id"`
	Time       time.Time         `json:"time"`
	// InKafka: whether Kafka has it in full (false: not exported yet, or
	// a stub only; null: unknown, no export group).
	InKafka *bool `json:"in_kafka"`
	// KafkaCopy: "full", "stub" (over the ingest's --dlq-max-bytes: its
	// coordinates only), "none" (not exported yet) or "unknown".
	KafkaCopy string `json:"kafka_copy"`
	// Stub: why Kafka has a stub only.
	Stub string `json:"stub,omitempty"`
}

func printJSON(w io.Writer, dls []worker.DeadLetter, states map[string]exportInfo) error {
	enc := json.NewEncoder(w)
	for _, d := range dls {
		j := deadLetterJSON{Ref: d.Ref, DLQ: d.DLQ, ID: d.ID, Topic: d.Topic, Partition: d.Partition, Offset: d.Offset,
			Key: d.Key, Value: d.Value, Headers: d.Headers, Malformed: d.Malformed,
			Reason: d.Info.Reason, Error: d.Info.Error, Group: d.Info.Group, Consumer: d.Info.Consumer,
			Deliveries: d.Info.Deliveries, ReadFrom: d.Info.Stream, EntryID: d.Info.ID, Time: d.Info.Time}
		if d.Malformed {
			j.Fields = d.Fields
		}
		x := states[d.Ref]
		if x.state != exportUnknown {
			in := x.state == exported
			j.InKafka = &in
		}
		j.KafkaCopy, j.Stub = x.state.kafkaCopy(), x.stub
		if err := enc.Encode(j); err != nil {
			return err
		}
	}
	return nil
}

// kafkaDeadLetterJSON is a dead letter of a dead-letter topic, for --json.
type kafkaDeadLetterJSON struct {
	KafkaRef  string            `json:"kafka_ref"`
	Ref       string            `json:"ref"` // in Redis
	InRedis   *bool             `json:"in_redis"`
	Topic     string            `json:"topic"`
	Partition int               `json:"partition"`
	Offset    int64             `json:"offset"`
	Timestamp string            `json:"timestamp,omitempty"`
	Key       []byte            `json:"key"`
	Value     []byte            `json:"value"`
	Headers   []wire.Header     `json:"headers,omitempty"`
	Malformed string            `json:"malformed,omitempty"`
	Fields    map[string]string `json:"fields,omitempty"`
	// Stub: why this is a stub (no key, value or headers: the record was
	// over the ingest's --dlq-max-bytes); "" for a full copy.
	Stub       string    `json:"stub,omitempty"`
	Reason     string    `json:"reason"`
	Error      string    `json:"error"`
	Group      string    `json:"group"`
	Consumer   string    `json:"consumer"`
	Deliveries int64     `json:"deliveries"`
	ReadFrom   string    `json:"read_from"`
	EntryID    string    `json:"entry_id"`
	Time       time.Time `json:"time"`
}

func printKafkaJSON(w io.Writer, dls []kafkaDeadLetter) error {
	enc := json.NewEncoder(w)
	for _, d := range dls {
		j := kafkaDeadLetterJSON{KafkaRef: d.Ref.String(), Ref: d.KafkaDeadLetter.Ref, InRedis: d.inRedis,
			Topic: d.Topic, Partition: d.Partition, Offset: d.Offset, Timestamp: d.Timestamp,
			Key: d.Key, Value: d.Value, Headers: d.Headers, Malformed: d.Malformed, Stub: d.Stub,
			Reason: d.Info.Reason, Error: d.Info.Error, Group: d.Info.Group, Consumer: d.Info.Consumer,
			Deliveries: d.Info.Deliveries, ReadFrom: d.Info.Stream, EntryID: d.Info.ID, Time: d.Info.Time}
		if len(d.Fields) > 0 {
			j.Fields = d.Fields
		}
		if err := enc.Encode(j); err != nil {
			return err
		}
	}
	return nil
}

// bytesText shows bytes as text when they are printable UTF-8, quoted Go
// style otherwise; "(null)" for nil.
func bytesText(b []byte) string {
	if b == nil {
		return "(null)"
	}
	if utf8.Valid(b) && !strings.ContainsFunc(string(b), func(r rune) bool { return r < 0x20 && r != '\t' }) {
		return string(b)
	}
	return strconv.Quote(string(b))
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
