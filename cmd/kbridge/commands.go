package main

import "github.com/urfave/cli/v2"

// commands lists the subcommands. Each lives in its own file.
func commands() []*cli.Command {
	return []*cli.Command{
		demoCommand(),
		ingestCommand(),
		workerCommand(),
		statusCommand(),
		dlqCommand(),
		groupsCommand(),
		produceCommand(),
		conformanceCommand(),
		conformanceHandlerCommand(),
	}
}
