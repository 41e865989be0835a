package bridge

// InjectCommitFault makes the ingest fail the commit of every partition for
// which fault returns an error, as if the broker refused it (a seam for
// tests of commit failures).
func InjectCommitFault(in *Ingest, fault func(topic string, partition int) error) {
	in.commitFault = fault
}
