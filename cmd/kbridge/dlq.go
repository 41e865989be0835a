package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/worker"
)

// dlqCommand is "kbridge dlq": list, show, replay and delete dead letters.
func dlqCommand() *cli.Command {
	filterFlags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "topic", EnvVars: []string{"KBRIDGE_DLQ_TOPIC"}, Usage: "only dead letters of this topic"},
			&cli.IntSliceFlag{Name: "partition", EnvVars: []string{"KBRIDGE_DLQ_PARTITION"}, Usage: "only these partitions (with --topic)"},
			&cli.StringFlag{Name: "group", EnvVars: []string{"KBRIDGE_DLQ_GROUP"}, Usage: "only dead letters of this worker group"},
		}
	}
	jsonFlag := &cli.BoolFlag{Name: "json", EnvVars: []string{"KBRIDGE_DLQ_JSON"}, Usage: "print JSON, one object per line"}
	allFlag := &cli.BoolFlag{Name: "all", EnvVars: []string{"KBRIDGE_DLQ_ALL"}, Usage: "every dead letter the filters select (instead of REFs)"}
	return &cli.Command{
		Name:  "dlq",
		Usage: "list, show, replay or delete dead letters",
		Description: `A record whose handler failed on every allowed delivery (or that is malformed,
or that a handler rejected as permanent) is written to its partition's
dead-letter stream <prefix>:{<topic>:<partition>}:dlq with the reason and
the last error, then acknowledged so that commits move on. Each dead letter is
named by a REF, <topic>:<partition>/<entry id>, as "list" prints it.

"replay" moves dead letters to the partition's replay stream, where the
workers of the group that gave up on them process them again.

Examples:
   kbridge dlq list
   kbridge dlq list --topic orders --json
   kbridge dlq show orders:3/1718000000000-0
   kbridge dlq replay orders:3/1718000000000-0
   kbridge dlq replay --all --topic orders
   kbridge dlq delete --all --group billing`,
		Subcommands: []*cli.Command{
			{
				Name:      "list",
				Usage:     "list dead letters, oldest first per partition",
				UsageText: "kbridge dlq list [--topic T] [--partition P]... [--group G] [--limit N] [--json]",
				Flags: append(filterFlags(), jsonFlag,
					&cli.IntFlag{Name: "limit", Value: 100, EnvVars: []string{"KBRIDGE_DLQ_LIMIT"}, Usage: "at most this many (0 = all)"}),
				Action: dlqList,
			},
			{
				Name:      "show",
				Usage:     "show dead letters in full: record, headers, reason, error",
				UsageText: "kbridge dlq show REF... [--json]",
				Flags:     []cli.Flag{jsonFlag},
				Action:    dlqShow,
			},
			{
				Name:      "replay",
				Usage:     "hand dead letters back to the workers",
				UsageText: "kbridge dlq replay REF...\n   kbridge dlq replay --all [--topic T] [--partition P]... [--group G]",
				Flags:     append(filterFlags(), allFlag),
				Action:    func(c *cli.Context) error { return dlqMove(c, "replay") },
			},
			{
				Name:      "delete",
				Usage:     "delete dead letters for good",
				UsageText: "kbridge dlq delete REF...\n   kbridge dlq delete --all [--topic T] [--partition P]... [--group G]",
				Flags:     append(filterFlags(), allFlag),
				Action:    func(c *cli.Context) error { return dlqMove(c, "delete") },
			},
		},
	}
}

func dlqFilter(c *cli.Context) (worker.Filter, error) {
	f := worker.Filter{Topic: c.String("topic"), Group: c.String("group")}
	if c.IsSet("partition") {
		if f.Topic == "" {
			return f, cli.Exit("--partition needs --topic", 2)
		}
		f.Partitions = c.IntSlice("partition")
		for _, p := range f.Partitions {
			if p < 0 {
				return f, cli.Exit(fmt.Sprintf("--partition %d must not be negative", p), 2)
			}
		}
	}
	return f, nil
}

func dlqList(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit(fmt.Sprintf("list takes no arguments, got %q", c.Args().Slice()), 2)
	}
	f, err := dlqFilter(c)
	if err != nil {
		return err
	}
	if f.Limit = c.Int("limit"); f.Limit < 0 {
		return cli.Exit("--limit must not be negative", 2)
	}
	rdb, err := newRedis(c)
	if err != nil {
		return err
	}
	defer rdb.Close()
	dls, err := worker.ListDeadLetters(c.Context, rdb, c.String("prefix"), f)
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	out := c.App.Writer
	if c.Bool("json") {
		return printJSON(out, dls)
	}
	if len(dls) == 0 {
		fmt.Fprintln(out, "no dead letters")
		return nil
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REF\tOFFSET\tGROUP\tDELIVERIES\tREASON\tDEAD-LETTERED\tERROR")
	for _, d := range dls {
		off := strconv.FormatInt(d.Offset, 10)
		if d.Malformed {
			off = "?"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", d.Ref, off, d.Info.Group, d.Info.Deliveries, d.Info.Reason,
			d.Info.Time.Format(time.RFC3339), truncate(oneLine(d.Info.Error), 80))
	}
	return tw.Flush()
}

func dlqShow(c *cli.Context) error {
	if c.NArg() == 0 {
		return cli.Exit("give one or more REFs, as \"kbridge dlq list\" prints them", 2)
	}
	if err := checkRefs(c); err != nil {
		return err
	}
	rdb, err := newRedis(c)
	if err != nil {
		return err
	}
	defer rdb.Close()
	var dls []worker.DeadLetter
	for _, ref := range c.Args().Slice() {
		d, err := worker.GetDeadLetter(c.Context, rdb, c.String("prefix"), ref)
		if err != nil {
			return cli.Exit(err.Error(), 1)
		}
		dls = append(dls, d)
	}
	out := c.App.Writer
	if c.Bool("json") {
		return printJSON(out, dls)
	}
	for i, d := range dls {
		if i > 0 {
			fmt.Fprintln(out)
		}
		fmt.Fprintf(out, "ref:          %s\n", d.Ref)
		fmt.Fprintf(out, "dlq stream:   %s (entry %s)\n", d.DLQ, d.ID)
		fmt.Fprintf(out, "read from:    %s (entry %s)\n", d.Info.Stream, d.Info.ID)
		fmt.Fprintf(out, "reason:       %s\n", d.Info.Reason)
		fmt.Fprintf(out, "error:        %s\n", d.Info.Error)
		fmt.Fprintf(out, "group:        %s\n", d.Info.Group)
		fmt.Fprintf(out, "consumer:     %s\n", d.Info.Consumer)
		fmt.Fprintf(out, "deliveries:   %d\n", d.Info.Deliveries)
		fmt.Fprintf(out, "dead-lettered: %s\n", d.Info.Time.Format(time.RFC3339Nano))
		if d.Malformed {
			fmt.Fprintln(out, "fields (malformed entry):")
			for k, v := range d.Fields {
				fmt.Fprintf(out, "  %s = %s\n", k, bytesText([]byte(v)))
			}
			continue
		}
		fmt.Fprintf(out, "record:       %s/%d offset %d\n", d.Topic, d.Partition, d.Offset)
		fmt.Fprintf(out, "key:          %s\n", bytesText(d.Key))
		fmt.Fprintf(out, "value:        %s\n", bytesText(d.Value))
		for _, h := range d.Headers {
			fmt.Fprintf(out, "header:       %s = %s\n", h.Key, bytesText(h.Value))
		}
	}
	return nil
}

// dlqMove replays or deletes the dead letters named by REF arguments, or
// with --all those the filters select.
func dlqMove(c *cli.Context, verb string) error {
	f, err := dlqFilter(c)
	if err != nil {
		return err
	}
	all := c.Bool("all")
	switch {
	case all && c.NArg() > 0:
		return cli.Exit("give REFs or --all, not both", 2)
	case !all && c.NArg() == 0:
		return cli.Exit(fmt.Sprintf("give the REFs to %s (see \"kbridge dlq list\"), or --all", verb), 2)
	case !all && (f.Topic != "" || f.Group != ""):
		return cli.Exit("--topic, --partition and --group go with --all", 2)
	}
	if err := checkRefs(c); err != nil {
		return err
	}
	rdb, err := newRedis(c)
	if err != nil {
		return err
	}
	defer rdb.Close()
	prefix := c.String("prefix")
	var dls []worker.DeadLetter
	if all {
		if dls, err = worker.ListDeadLetters(c.Context, rdb, prefix, f); err != nil {
			return cli.Exit(err.Error(), 1)
		}
	} else {
		for _, ref := range c.Args().Slice() {
			d, err := worker.GetDeadLetter(c.Context, rdb, prefix, ref)
			if err != nil {
				return cli.Exit(err.Error(), 1)
			}
			dls = append(dls, d)
		}
	}
	var n int
	if verb == "replay" {
		n, err = worker.ReplayDeadLetters(c.Context, rdb, dls)
	} else {
		n, err = worker.DeleteDeadLetters(c.Context, rdb, dls)
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("%s: %v (%d done)", verb, err, n), 1)
	}
	past := map[string]string{"replay": "replayed", "delete": "deleted"}[verb]
	fmt.Fprintf(c.App.Writer, "%s %d dead letter(s)\n", past, n)
	return nil
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
}

func printJSON(w io.Writer, dls []worker.DeadLetter) error {
	enc := json.NewEncoder(w)
	for _, d := range dls {
		j := deadLetterJSON{Ref: d.Ref, DLQ: d.DLQ, ID: d.ID, Topic: d.Topic, Partition: d.Partition, Offset: d.Offset,
			Key: d.Key, Value: d.Value, Headers: d.Headers, Malformed: d.Malformed,
			Reason: d.Info.Reason, Error: d.Info.Error, Group: d.Info.Group, Consumer: d.Info.Consumer,
			Deliveries: d.Info.Deliveries, ReadFrom: d.Info.Stream, EntryID: d.Info.ID, Time: d.Info.Time}
		if d.Malformed {
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

// checkRefs rejects (exit 2) any argument that is not a dead-letter REF.
func checkRefs(c *cli.Context) error {
	for _, ref := range c.Args().Slice() {
		if _, _, _, err := worker.ParseRef(ref); err != nil {
			return cli.Exit(err.Error(), 2)
		}
	}
	return nil
}
