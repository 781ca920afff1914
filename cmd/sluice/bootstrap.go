package main

import (
	"io"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/xds/bootstrap"
)

func bootstrapCmd(args []string, stdout, stderr io.Writer) error {
	path, err := configFlag("envoy bootstrap", args, stderr)
	if err != nil {
		return err
	}
	cfg, err := policies.LoadFile(path)
	if err != nil {
		return err
	}
	out, err := bootstrap.Render(cfg)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}
