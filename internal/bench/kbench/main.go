// Command kbench drives the kbridge benchmarks of scripts/bench.sh against a
// real Kafka broker and a real Redis, and writes docs/benchmarks.md.
//
//	kbench run    --brokers B --redis A --kbridge BIN --results F [--quick] [--only 10a,8-iv]
//	kbench report --results F --out docs/benchmarks.md
//	kbench worker ...   a worker process (the worker library) with a synthetic handler
//	kbench sink ...     an HTTP endpoint for kbridge worker --http that counts records
//
// Every figure is a ratio or a paired measurement from one run, repeated and
// interleaved (the machine is shared and noisy): medians and spreads.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(os.Args[2:])
	case "report":
		err = cmdReport(os.Args[2:])
	case "worker":
		err = cmdWorker(os.Args[2:])
	case "sink":
		err = cmdSink(os.Args[2:])
	case "ingest":
		err = cmdIngest(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kbench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: kbench run|report|worker|sink|ingest [flags] (see -h of each; scripts/bench.sh runs it)`)
	os.Exit(2)
}
