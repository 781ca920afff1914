// Command sluice is the data-access gateway's one binary: the xDS control
// plane, ext_authz and ext_proc services and the API (serve), the Envoy
// bootstrap generator (envoy bootstrap) and, as later parts land, the grants
// and audit tools. See README.md for the whole picture.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `sluice — a data-access gateway for autonomous agents, built on Envoy

Usage:
  sluice serve --config FILE            run the control plane, ext_authz, ext_proc and the API
  sluice envoy bootstrap --config FILE  print the Envoy bootstrap YAML for that config
  sluice grants request|list|get|approve|deny|revoke ...
                                        just-in-time grants, through the API ("sluice grants -h")
  sluice audit verify|query|keygen ...  check, search and key the audit trail ("sluice audit -h")
  sluice version                        print the version

Run "sluice COMMAND -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "sluice:", err)
		}
		os.Exit(2)
	}
}

// run dispatches a command line; it is main without the process, for tests.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "serve":
		return serveCmd(ctx, args[1:], stderr)
	case "envoy":
		if len(args) < 2 || args[1] != "bootstrap" {
			fmt.Fprint(stderr, usage)
			return errors.New(`unknown envoy command (expected "envoy bootstrap")`)
		}
		return bootstrapCmd(args[2:], stdout, stderr)
	case "audit":
		return auditCmd(ctx, args[1:], stdout, stderr)
	case "grants":
		return grantsCmd(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "sluice", Version())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// configFlag parses the --config flag every config-driven command takes.
func configFlag(name string, args []string, stderr io.Writer) (string, error) {
	fs := flag.NewFlagSet("sluice "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "path to the sluice YAML config (required)")
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() > 0 {
		return "", fmt.Errorf("%s: unexpected argument %q", name, fs.Arg(0))
	}
	if *path == "" {
		fs.Usage()
		return "", fmt.Errorf("%s: --config is required", name)
	}
	return *path, nil
}
