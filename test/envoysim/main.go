// Command envoysim runs the Envoy stand-in of test/envoysim against an ADS
// server, so a person can try sluice's whole path on one machine without an
// Envoy binary. It is a test stand-in, not a data plane.
//
//	go run ./test/envoysim --xds 127.0.0.1:18000 --node sluice-dev --admin 127.0.0.1:9901
//
// GET http://ADMIN/stats prints counters under Envoy's stat names.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/sluicehq/sluice/test/envoysim/envoysim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "envoysim:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, logw io.Writer) error {
	fs := flag.NewFlagSet("envoysim", flag.ContinueOnError)
	xds := fs.String("xds", "", "ADS server address (host:port), required")
	node := fs.String("node", "", "node id presented to the ADS server, required")
	cluster := fs.String("cluster", "envoysim", "node cluster")
	admin := fs.String("admin", "127.0.0.1:9901", "admin address serving GET /stats (empty: none)")
	closeThroughFM := fs.Bool("close-through-filter-manager", false,
		"model envoy.reloadable_features.connection_close_through_filter_manager=true (Envoy's default is false)")
	verbose := fs.Bool("v", false, "log connection and xDS events")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *xds == "" || *node == "" {
		return errors.New("--xds and --node are required")
	}
	logger := log.New(logw, "", log.LstdFlags|log.Lmicroseconds)
	opts := []envoysim.Option{
		envoysim.WithNode(&corev3.Node{Id: *node, Cluster: *cluster}),
		envoysim.WithCloseThroughFilterManager(*closeThroughFM),
	}
	if *verbose {
		opts = append(opts, envoysim.WithLogf(logger.Printf))
	}
	sim := envoysim.New(opts...)
	defer sim.Close()
	if err := sim.ConnectADS(*xds); err != nil {
		return err
	}
	logger.Printf("envoysim: node %s subscribed to ADS at %s", *node, *xds)
	if *admin != "" {
		ln, err := net.Listen("tcp", *admin)
		if err != nil {
			return fmt.Errorf("admin: %w", err)
		}
		srv := &http.Server{Handler: sim.AdminHandler()}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		logger.Printf("envoysim: admin on http://%s/stats", ln.Addr())
	}
	<-ctx.Done()
	return nil
}
