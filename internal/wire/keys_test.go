package wire

import (
	"strconv"
	"strings"
	"testing"
)

func TestStreamKeyRoundTrip(t *testing.T) {
	tests := []struct {
		name      string
		prefix    string
		topic     string
		partition int
		want      string
	}{
		{"default prefix", DefaultPrefix, "orders", 3, "kbridge:{orders:3}"},
		{"partition 0", "kbridge", "orders", 0, "kbridge:{orders:0}"},
		{"large partition", "kbridge", "orders", 12345, "kbridge:{orders:12345}"},
		{"prefix with colons", "app:prod:kb", "orders", 7, "app:prod:kb:{orders:7}"},
		{"prefix ending in colon", "app:", "orders", 1, "app::{orders:1}"},
		{"empty prefix", "", "orders", 2, ":{orders:2}"},
		{"prefix with braces", "a{b}c", "orders", 2, "a{b}c:{orders:2}"},
		{"prefix containing the tag opener", "x:{y", "orders", 2, "x:{y:{orders:2}"},
		{"topic with dot", "kbridge", "shop.orders", 0, "kbridge:{shop.orders:0}"},
		{"topic with underscore", "kbridge", "shop_orders", 0, "kbridge:{shop_orders:0}"},
		{"topic with dash", "kbridge", "shop-orders", 0, "kbridge:{shop-orders:0}"},
		{"topic with all legal punctuation", "kb", "a.b_c-d.9", 11, "kb:{a.b_c-d.9:11}"},
		{"numeric topic", "kb", "42", 4, "kb:{42:4}"},
		{"one-character topic", "kb", "x", 0, "kb:{x:0}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := StreamKey(tt.prefix, tt.topic, tt.partition)
			if got != tt.want {
				t.Fatalf("StreamKey(%q, %q, %d): want %q, got %q", tt.prefix, tt.topic, tt.partition, tt.want, got)
			}
			prefix, topic, partition, err := ParseStreamKey(got)
			if err != nil {
				t.Fatalf("ParseStreamKey(%q): want no error, got %v", got, err)
			}
			if prefix != tt.prefix || topic != tt.topic || partition != tt.partition {
				t.Fatalf("ParseStreamKey(%q): want (%q, %q, %d), got (%q, %q, %d)",
					got, tt.prefix, tt.topic, tt.partition, prefix, topic, partition)
			}
		})
	}
}

func TestParseStreamKeyRejects(t *testing.T) {
	tests := []struct {
		name string
		key  string
	}{
		{"empty", ""},
		{"no hash tag", "kbridge:orders:3"},
		{"no prefix separator", "{orders:3}"},
		{"unclosed tag", "kbridge:{orders:3"},
		{"no partition", "kbridge:{orders}"},
		{"empty partition", "kbridge:{orders:}"},
		{"empty topic", "kbridge:{:3}"},
		{"empty tag", "kbridge:{}"},
		{"negative partition", "kbridge:{orders:-1}"},
		{"non-numeric partition", "kbridge:{orders:x}"},
		{"partition with spaces", "kbridge:{orders: 3}"},
		{"partition overflow", "kbridge:{orders:99999999999999999999}"},
		{"partition above int32", "kbridge:{orders:2147483648}"},
		{"partition with a leading zero", "kbridge:{orders:03}"},
		{"partition with a plus sign", "kbridge:{orders:+3}"},
		{"partition -0", "kbridge:{orders:-0}"},
		{"dlq companion", "kbridge:{orders:3}:dlq"},
		{"replay companion", "kbridge:{orders:3}:replay"},
		{"status companion", "kbridge:{orders:3}:status"},
		{"registry", "kbridge:streams"},
		{"trailing text after tag", "kbridge:{orders:3}x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix, topic, partition, err := ParseStreamKey(tt.key)
			if err == nil {
				t.Fatalf("ParseStreamKey(%q): want an error, got (%q, %q, %d, nil)", tt.key, prefix, topic, partition)
			}
			if !strings.Contains(err.Error(), "wire:") {
				t.Errorf("ParseStreamKey(%q): want an error naming the package, got %q", tt.key, err)
			}
		})
	}
}

func TestCompanionKeys(t *testing.T) {
	stream := StreamKey("kbridge", "orders", 3)
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"dlq", DLQKey(stream), "kbridge:{orders:3}:dlq"},
		{"replay", ReplayKey(stream), "kbridge:{orders:3}:replay"},
		{"status", StatusKey(stream), "kbridge:{orders:3}:status"},
		{"registry", RegistryKey("kbridge"), "kbridge:streams"},
		{"registry with colon prefix", RegistryKey("app:kb"), "app:kb:streams"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("want %q, got %q", tt.want, tt.got)
			}
		})
	}
}

// TestCompanionKeysShareSlot checks that a stream and its companion keys hash
// to one Redis Cluster slot: they carry the same {hash tag}, and it is the
// first '{...}' of each key only when the prefix has no '{' of its own.
func TestCompanionKeysShareSlot(t *testing.T) {
	stream := StreamKey("kbridge", "orders", 3)
	want := hashTag(stream)
	if want != "orders:3" {
		t.Fatalf("hash tag of %q: want %q, got %q", stream, "orders:3", want)
	}
	for _, k := range []string{DLQKey(stream), ReplayKey(stream), StatusKey(stream)} {
		t.Run(k, func(t *testing.T) {
			if got := hashTag(k); got != want {
				t.Fatalf("hash tag of %q: want %q, got %q", k, want, got)
			}
		})
	}
}

// hashTag is the part of key Redis Cluster hashes: the text between the first
// '{' and the next '}', when that is not empty; the whole key otherwise.
func hashTag(key string) string {
	open := strings.IndexByte(key, '{')
	if open < 0 {
		return key
	}
	end := strings.IndexByte(key[open+1:], '}')
	if end <= 0 {
		return key
	}
	return key[open+1 : open+1+end]
}

func TestEntryID(t *testing.T) {
	tests := []struct {
		offset int64
		want   string
	}{
		{0, "0-1"},
		{1, "1-1"},
		{42, "42-1"},
		{1 << 40, "1099511627776-1"},
		{9223372036854775807, "9223372036854775807-1"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			got := EntryID(tt.offset)
			if got != tt.want {
				t.Fatalf("EntryID(%d): want %q, got %q", tt.offset, tt.want, got)
			}
			back, err := ParseID(got)
			if err != nil || back != tt.offset {
				t.Fatalf("ParseID(%q): want (%d, nil), got (%d, %v)", got, tt.offset, back, err)
			}
			through, err := Through(got)
			if err != nil || through != tt.offset {
				t.Fatalf("Through(%q): want (%d, nil), got (%d, %v)", got, tt.offset, through, err)
			}
		})
	}
}

func TestMinID(t *testing.T) {
	tests := []struct {
		offset int64
		want   string
	}{
		{0, "0-0"},
		{5, "5-0"},
		{1 << 40, "1099511627776-0"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			got := MinID(tt.offset)
			if got != tt.want {
				t.Fatalf("MinID(%d): want %q, got %q", tt.offset, tt.want, got)
			}
			// XTRIM MINID keeps IDs >= the threshold: the entry of offset
			// itself stays, the one of offset-1 goes.
			if c := compareIDs(t, EntryID(tt.offset), got); c < 0 {
				t.Errorf("EntryID(%d) = %q sorts below MinID %q: XTRIM would remove it", tt.offset, EntryID(tt.offset), got)
			}
			if tt.offset > 0 {
				if c := compareIDs(t, EntryID(tt.offset-1), got); c >= 0 {
					t.Errorf("EntryID(%d) = %q is not below MinID %q: XTRIM would keep it", tt.offset-1, EntryID(tt.offset-1), got)
				}
			}
			// Through of the threshold covers exactly the trimmed offsets.
			if th, err := Through(got); err != nil || th != tt.offset-1 {
				t.Errorf("Through(%q): want (%d, nil), got (%d, %v)", got, tt.offset-1, th, err)
			}
		})
	}
}

// compareIDs orders two full stream IDs "<ms>-<seq>" as Redis does.
func compareIDs(t *testing.T, a, b string) int {
	t.Helper()
	split := func(id string) [2]uint64 {
		ms, seq, ok := strings.Cut(id, "-")
		m, err1 := strconv.ParseUint(ms, 10, 64)
		s, err2 := strconv.ParseUint(seq, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			t.Fatalf("compareIDs: %q is not a full stream ID", id)
		}
		return [2]uint64{m, s}
	}
	x, y := split(a), split(b)
	for i := range x {
		if x[i] != y[i] {
			if x[i] < y[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}

func TestParseID(t *testing.T) {
	tests := []struct {
		id      string
		want    int64
		wantErr bool
	}{
		{id: "0-1", want: 0},
		{id: "5-1", want: 5},
		{id: "5-0", want: 5},
		{id: "5-7", want: 5},
		{id: "5", want: 5},
		{id: "0-0", want: 0},
		{id: "1234567890123-18446744073709551615", want: 1234567890123},
		{id: "", wantErr: true},
		{id: "-", wantErr: true},
		{id: "-1", wantErr: true},
		{id: "5-", wantErr: true},
		{id: "x-1", wantErr: true},
		{id: "5-x", wantErr: true},
		{id: "5-1-1", wantErr: true},
		{id: "5--1", wantErr: true},
		{id: "9223372036854775808-1", wantErr: true},
		{id: "5-18446744073709551616", wantErr: true},
		{id: "$", wantErr: true},
		{id: ">", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			got, err := ParseID(tt.id)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseID(%q): want an error, got (%d, nil)", tt.id, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseID(%q): want (%d, nil), got (%d, %v)", tt.id, tt.want, got, err)
			}
		})
	}
}

func TestThrough(t *testing.T) {
	tests := []struct {
		id      string
		want    int64
		wantErr bool
	}{
		{id: "0-0", want: -1}, // new group, empty stream: nothing
		{id: "0-1", want: 0},  // offset 0's entry
		{id: "5-1", want: 5},  // an entry ID written by the ingest
		{id: "5-0", want: 4},  // a MinID threshold: only the offsets below
		{id: "5-3", want: 5},  // any sequence >= 1 covers the offset
		{id: "5", want: 4},    // a bare ms part means "<ms>-0"
		{id: "0", want: -1},   // likewise
		{id: "1099511627776-1", want: 1 << 40},
		{id: "", wantErr: true},
		{id: "-1", wantErr: true},
		{id: "5-", wantErr: true},
		{id: "x-1", wantErr: true},
		{id: "5-x", wantErr: true},
		{id: "5--1", wantErr: true},
		{id: "9223372036854775808-1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			got, err := Through(tt.id)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("Through(%q): want an error, got (%d, nil)", tt.id, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Through(%q): want (%d, nil), got (%d, %v)", tt.id, tt.want, got, err)
			}
		})
	}
}
