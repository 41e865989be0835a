package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/kbridge/kbridge/bridge"
	"github.com/kbridge/kbridge/internal/wire"
)

// groupsCommand is "kbridge groups": the consumer groups on the partition
// streams. Every group that exists on a stream holds the ingest's commit and
// trim, whoever created it; removing one is this explicit act, never a side
// effect of --worker-groups.
func groupsCommand() *cli.Command {
	topicsFlag := &cli.StringSliceFlag{Name: "topics", EnvVars: []string{"KBRIDGE_TOPICS"},
		Usage: "only the streams of these topics (default: every stream registered under --prefix)"}
	return &cli.Command{
		Name:  "groups",
		Usage: "list the consumer groups on the partition streams, or remove one",
		Description: `Every Redis consumer group on a partition stream holds the ingest's Kafka
commit and the stream's trim: the ingest commits an offset only once every
group acknowledged every entry below it — the groups its --worker-groups
creates, and any other (one another ingest created during a rolling restart,
one an operator made). Leaving a group out of --worker-groups therefore does
not remove it; a group nobody reads any more holds the commit for ever, and the
stream grows until the ingest pauses the partition. Remove it here.

"remove" destroys the group (XGROUP DESTROY) on the partition streams and their
replay streams: its pending entries are forgotten and the commit moves on
without it. Remove the group from every ingest's --worker-groups first (a
rolling restart): an ingest that still lists it recreates it at 0, and every
entry still in the stream is delivered to it again.

Examples:
   kbridge groups list
   kbridge groups list --topics orders --json
   kbridge groups remove --group audit --topics orders          (shows what it would do)
   kbridge groups remove --group audit --topics orders --yes`,
		Subcommands: []*cli.Command{
			{
				Name:      "list",
				Usage:     "list the groups of each partition stream: consumers, pending entries, what each holds",
				UsageText: "kbridge groups list [--topics T,...] [--json]",
				Flags: []cli.Flag{topicsFlag,
					&cli.BoolFlag{Name: "json", EnvVars: []string{"KBRIDGE_GROUPS_JSON"}, Usage: "print JSON, one object per line"}},
				Action: groupsList,
			},
			{
				Name:      "remove",
				Usage:     "destroy a consumer group on the partition streams (and their replay streams)",
				UsageText: "kbridge groups remove --group GROUP [--topics T,...] --yes [--force]",
				Flags: []cli.Flag{topicsFlag,
					&cli.StringFlag{Name: "group", EnvVars: []string{"KBRIDGE_GROUPS_GROUP"}, Usage: "the consumer group to destroy (required)"},
					&cli.BoolFlag{Name: "yes", EnvVars: []string{"KBRIDGE_GROUPS_YES"}, Usage: "really destroy it (without: show what would be destroyed, exit 2)"},
					&cli.BoolFlag{Name: "force", EnvVars: []string{"KBRIDGE_GROUPS_FORCE"}, Usage: "destroy it even though a running ingest still creates it (it is recreated at 0)"}},
				Action: groupsRemove,
			},
		},
	}
}

// groupRow is one group on one stream.
type groupRow struct {
	Stream    string `json:"stream"`
	Topic     string `json:"topic"`
	Partition int    `json:"partition"`
	Group     string `json:"group"`
	Consumers int64  `json:"consumers"`
	Pending   int64  `json:"pending"`
	// LastDelivered is the group's last-delivered-id.
	LastDelivered string `json:"last_delivered_id"`
	// Holds is the lowest offset the group has not acknowledged (its lowest
	// pending entry, else the first entry it was not delivered yet); -1 when
	// it acknowledged everything in the stream.
	Holds int64 `json:"holds"`
	// Replay is true for the group on the partition's replay stream.
	Replay bool `json:"replay,omitempty"`
	// CreatedBy lists the ingest that creates the group, from its status
	// hash ("" when no running ingest lists it in --worker-groups).
	CreatedBy string `json:"created_by,omitempty"`
}

// listGroups reads every group of the registered streams (of topics, if
// given), with their replay streams.
func listGroups(ctx context.Context, rdb redis.UniversalClient, prefix string, topics []string) ([]groupRow, error) {
	members, err := rdb.SMembers(ctx, wire.RegistryKey(prefix)).Result()
	if err != nil {
		return nil, fmt.Errorf("read the stream registry %s: %w", wire.RegistryKey(prefix), err)
	}
	sort.Strings(members)
	var rows []groupRow
	for _, key := range members {
		pfx, topic, part, err := wire.ParseStreamKey(key)
		if err != nil || pfx != prefix || len(topics) > 0 && !slices.Contains(topics, topic) {
			continue
		}
		status, err := rdb.HGetAll(ctx, wire.StatusKey(key)).Result()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", wire.StatusKey(key), err)
		}
		st := bridge.ParseStatus(status)
		for _, s := range []struct {
			key    string
			replay bool
		}{{key, false}, {wire.ReplayKey(key), true}} {
			gs, err := rdb.XInfoGroups(ctx, s.key).Result()
			if err != nil {
				if isNoStream(err) {
					continue
				}
				return nil, fmt.Errorf("XINFO GROUPS %s: %w", s.key, err)
			}
			for _, g := range gs {
				row := groupRow{Stream: s.key, Topic: topic, Partition: part, Group: g.Name, Consumers: g.Consumers,
					Pending: g.Pending, LastDelivered: g.LastDeliveredID, Holds: -1, Replay: s.replay}
				if len(status) > 0 && slices.Contains(st.WorkerGroups, g.Name) && !s.replay {
					row.CreatedBy = st.Owner
				}
				if row.Holds, err = groupHolds(ctx, rdb, s.key, g.Name, g.LastDeliveredID, g.Pending); err != nil {
					return nil, err
				}
				rows = append(rows, row)
			}
		}
	}
	return rows, nil
}

// groupHolds returns the lowest offset a group has not acknowledged, or -1.
func groupHolds(ctx context.Context, rdb redis.UniversalClient, key, group, last string, pending int64) (int64, error) {
	holds := int64(-1)
	if pending > 0 {
		p, err := rdb.XPending(ctx, key, group).Result()
		if err != nil {
			return 0, fmt.Errorf("XPENDING %s %s: %w", key, group, err)
		}
		if off, err := wire.ParseID(p.Lower); err == nil {
			holds = off
		}
	}
	next, err := rdb.XRangeN(ctx, key, "("+last, "+", 1).Result()
	if err != nil {
		return 0, fmt.Errorf("XRANGE %s: %w", key, err)
	}
	if len(next) > 0 {
		if off, err := wire.ParseID(next[0].ID); err == nil && (holds < 0 || off < holds) {
			holds = off
		}
	}
	return holds, nil
}

// isNoStream is XINFO's reply for a key that does not exist.
func isNoStream(err error) bool { return redis.HasErrorPrefix(err, "no such key") }

// groupsProblems checks every flag and argument of "kbridge groups <verb>"
// (list or remove) and the Redis flags, and returns every problem found, for
// one exit-2 message that lists them all.
func groupsProblems(c *cli.Context, verb string) []string {
	var probs []string
	if c.NArg() > 0 {
		hint := ""
		if verb == "remove" {
			hint = ": kbridge groups remove --group GROUP --yes"
		}
		probs = append(probs, fmt.Sprintf("%s takes no arguments, got %q%s", verb, c.Args().Slice(), hint))
		if len(c.Args().Slice()) > 1 && !strings.HasPrefix(c.Args().First(), "-") {
			probs = append(probs, fmt.Sprintf("flags after %q are not read: flags go before any argument", c.Args().First()))
		}
	}
	for _, t := range splitList(c.StringSlice("topics")) {
		if !kafkaTopicName(t) {
			probs = append(probs, fmt.Sprintf("--topics: %q is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)", t))
		}
	}
	if verb == "remove" && strings.TrimSpace(c.String("group")) == "" {
		probs = append(probs, "--group is required: kbridge groups remove --group GROUP --yes")
	}
	return append(probs, redisProblems(c)...)
}

// groupsFlagsError is the exit-2 error of "kbridge groups <verb>" listing
// probs, or nil when there is none.
func groupsFlagsError(verb string, probs []string) error {
	if len(probs) == 0 {
		return nil
	}
	return cli.Exit(fmt.Sprintf("invalid groups %s flags or arguments:\n  - %s", verb, strings.Join(probs, "\n  - ")), 2)
}

func groupsList(c *cli.Context) error {
	if err := groupsFlagsError("list", groupsProblems(c, "list")); err != nil {
		return err
	}
	rdb, err := newRedis(c)
	if err != nil {
		return err
	}
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	rows, err := listGroups(ctx, rdb, c.String("prefix"), splitList(c.StringSlice("topics")))
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		for _, r := range rows {
			if err := enc.Encode(r); err != nil {
				return cli.Exit(err.Error(), 1)
			}
		}
		return nil
	}
	return printGroups(c.App.Writer, rows, c.String("prefix"))
}

func printGroups(w io.Writer, rows []groupRow, prefix string) error {
	if len(rows) == 0 {
		fmt.Fprintf(w, "no consumer groups: no stream registered under %s, or none has a group\n", wire.RegistryKey(prefix))
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tGROUP\tCONSUMERS\tPENDING\tHOLDS\tLAST-DELIVERED\tCREATED-BY")
	for _, r := range rows {
		holds, by := num(r.Holds), r.CreatedBy
		if r.Holds < 0 {
			holds = "-"
		}
		if by == "" {
			by = "(no running ingest lists it)"
			if r.Replay {
				by = "(kbridge dlq replay)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\n", r.Stream, r.Group, r.Consumers, r.Pending, holds, r.LastDelivered, by)
	}
	return tw.Flush()
}

func groupsRemove(c *cli.Context) error {
	if err := groupsFlagsError("remove", groupsProblems(c, "remove")); err != nil {
		return err
	}
	group := c.String("group")
	rdb, err := newRedis(c)
	if err != nil {
		return err
	}
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	rows, err := listGroups(ctx, rdb, c.String("prefix"), splitList(c.StringSlice("topics")))
	if err != nil {
		return cli.Exit(err.Error(), 1)
	}
	var targets []groupRow
	var owners []string
	var pending int64
	for _, r := range rows {
		if r.Group != group {
			continue
		}
		targets = append(targets, r)
		pending += r.Pending
		if r.CreatedBy != "" && !slices.Contains(owners, r.CreatedBy) {
			owners = append(owners, r.CreatedBy)
		}
	}
	out := c.App.Writer
	if len(targets) == 0 {
		return cli.Exit(fmt.Sprintf("group %q is on no stream registered under %s", group, wire.RegistryKey(c.String("prefix"))), 1)
	}
	if len(owners) > 0 && !c.Bool("force") {
		return cli.Exit(fmt.Sprintf("group %q is still in the --worker-groups of the running ingest %s: it would be recreated at 0 and every entry in the stream delivered to it again. Remove it from --worker-groups first (restart the ingest), or pass --force",
			group, strings.Join(owners, ", ")), 1)
	}
	if !c.Bool("yes") {
		fmt.Fprintf(out, "would destroy group %s on %d streams (%d pending entries forgotten):\n", group, len(targets), pending)
		_ = printGroups(out, targets, c.String("prefix"))
		return cli.Exit("nothing done: pass --yes to destroy the group", 2)
	}
	for _, r := range targets {
		if err := rdb.XGroupDestroy(ctx, r.Stream, group).Err(); err != nil && !errors.Is(err, redis.Nil) {
			return cli.Exit(fmt.Sprintf("XGROUP DESTROY %s %s: %v", r.Stream, group, err), 1)
		}
		fmt.Fprintf(out, "destroyed group %s on %s (%d pending)\n", group, r.Stream, r.Pending)
		// The group's runs records (docs/wire.md rule 8) go with it: nobody
		// else deletes them once the group is gone.
		runs := []string{wire.RunsKey(r.Stream, group), wire.RunsKey(wire.ReplayKey(r.Stream), group)}
		if err := rdb.Del(ctx, runs...).Err(); err != nil {
			fmt.Fprintf(out, "warning: cannot delete the group's runs hashes %s: %v (delete them by hand)\n", strings.Join(runs, ", "), err)
		}
	}
	return nil
}
