package wire

import "testing"

// TestSlot checks Slot against CLUSTER KEYSLOT of redis-server 7.0.15.
func TestSlot(t *testing.T) {
	for key, want := range map[string]int{
		"":                     0,
		"foo":                  12182,
		"bar":                  5061,
		"hello":                866,
		"123456789":            12739, // CRC16/XMODEM check value 0x31C3
		"{user1000}.following": 3443,  // the hash tag only
		"user1000":             3443,
		"a{}b":                 13694, // empty tag: the whole key
		"{}":                   15257,
		"x{y":                  2740, // no closing brace: the whole key
		"kbridge:{orders:3}":   4577,
	} {
		if got := Slot(key); got != want {
			t.Errorf("Slot(%q) = %d, want %d", key, got, want)
		}
	}
	s := StreamKey("kbridge", "orders", 3)
	for _, k := range []string{DLQKey(s), ReplayKey(s), StatusKey(s), DLQKey(ReplayKey(s))} {
		if Slot(k) != Slot(s) {
			t.Errorf("Slot(%q) = %d, want the stream's slot %d", k, Slot(k), Slot(s))
		}
	}
}
