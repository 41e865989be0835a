package conformance

// Rule is one rule of docs/wire.md that the kit checks.
type Rule struct {
	ID    string // as in docs/wire.md: "W1", "W2", ...
	Title string
}

// Rules lists the rules the kit checks (W19 and W20 came after the others:
// the IDs stay stable).
var Rules = []Rule{
	{"W1", "checks the wire version at start-up: runs without the key, refuses a version it does not speak"},
	{"W2", "discovers every registered partition stream, new ones too"},
	{"W3", "never creates a group on a partition stream"},
	{"W4", "handles each record once and acknowledges it"},
	{"W5", "decodes entries byte for byte (the valid test vectors)"},
	{"W6", "dead-letters malformed fields and IDs without handling them"},
	{"W7", "dead-letters malformed headers without handling them"},
	{"W8", "retries a failure, with Redis's delivery count"},
	{"W9", "dead-letters after exactly max deliveries, with the dead-letter fields"},
	{"W10", "never dead-letters an entry another consumer holds"},
	{"W11", "extends the lease of a long handler (beside an aggressive reclaimer)"},
	{"W12", "reclaims entries idle for the visibility timeout (a dead consumer's, a SIGKILLed worker's)"},
	{"W13", "leaves alone entries idle less than the group's visibility timeout"},
	{"W14", "survives pending entries deleted from the stream (XAUTOCLAIM deleted IDs)"},
	{"W15", "dead-letters without running an entry reclaimed past max deliveries (max runs recorded)"},
	{"W16", "replayed dead letters: handled with the offset field, other groups' acknowledged, failures to the partition's DLQ"},
	{"W17", "SIGTERM: finishes running handlers, acknowledges, deletes its consumer, exits 0"},
	{"W18", "shutdown timeout: exits non-zero, leaves the entry pending, keeps its consumer"},
	{"W19", "checks the wire version again while it runs: stops when it changes"},
	{"W20", "loses nothing: after every scenario, each entry the group read was handled, dead-lettered or is still pending"},
}
