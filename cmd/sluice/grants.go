package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/sluicehq/sluice/authz/grants"
)

const grantsUsage = `Usage:
  sluice grants request --target T (--class C [--class C ...] | --statement SQL) --duration 30m --reason TEXT
  sluice grants list [--target T] [--subject S] [--state STATE] [--limit N]
  sluice grants get ID
  sluice grants approve ID [--note TEXT]
  sluice grants deny ID [--note TEXT]
  sluice grants revoke ID [--note TEXT]

Every command takes:
  --api URL          sluice's API (default: $SLUICE_API, else http://127.0.0.1:8080)
  --token-file FILE  a file holding your OIDC access token (default: the token in $SLUICE_TOKEN)
  --json             print the API's JSON instead of a table
`

// defaultAPI is server.api's default address.
const defaultAPI = "http://127.0.0.1:8080"

// grantsTimeout bounds one API call.
const grantsTimeout = 30 * time.Second

// grantsCmd is "sluice grants …": the grants API for people. The token is
// read from $SLUICE_TOKEN or a file, never from a flag, which would leave
// it in shell history and in ps.
func grantsCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, grantsUsage)
		return errors.New("grants: no subcommand given")
	}
	sub, args := args[0], args[1:]
	if sub == "help" || sub == "-h" || sub == "--help" {
		fmt.Fprint(stdout, grantsUsage)
		return nil
	}
	fs := flag.NewFlagSet("sluice grants "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, grantsUsage) }
	apiURL := fs.String("api", getenvDefault("SLUICE_API", defaultAPI), "sluice's API URL")
	tokenFile := fs.String("token-file", "", "file holding your OIDC access token (default: $SLUICE_TOKEN)")
	asJSON := fs.Bool("json", false, "print JSON")

	var (
		req     grants.CreateRequest
		classes []string
		note    string
		q       = url.Values{}
	)
	switch sub {
	case "request":
		fs.StringVar(&req.Target, "target", "", "target name")
		fs.Func("class", "operation class to ask for (repeat, or comma-separate): read, write, ddl, admin", func(s string) error {
			for c := range strings.SplitSeq(s, ",") {
				if c = strings.TrimSpace(c); c != "" {
					classes = append(classes, c)
				}
			}
			return nil
		})
		fs.StringVar(&req.Statement, "statement", "", "the one statement to ask for")
		fs.StringVar(&req.Duration, "duration", "", "how long, once approved (30m, 2h)")
		fs.StringVar(&req.Reason, "reason", "", "why: approvers decide on it")
	case "list":
		for _, name := range []string{"target", "subject", "state", "limit"} {
			fs.Func(name, "only grants with this "+name, func(s string) error { q.Set(name, s); return nil })
		}
	case "approve", "deny", "revoke":
		fs.StringVar(&note, "note", "", "a note kept with the grant and in the audit trail")
	case "get":
	default:
		fmt.Fprint(stderr, grantsUsage)
		return fmt.Errorf("grants: unknown subcommand %q", sub)
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	var id string
	switch {
	case (sub == "request" || sub == "list") && len(pos) > 0:
		return fmt.Errorf("grants %s: unexpected argument %q", sub, pos[0])
	case sub != "request" && sub != "list" && len(pos) != 1:
		return fmt.Errorf("grants %s: expected one grant ID, got %d arguments", sub, len(pos))
	case len(pos) == 1:
		id = pos[0]
	}
	c, err := newGrantsClient(*apiURL, *tokenFile, stderr)
	if err != nil {
		return fmt.Errorf("grants %s: %w", sub, err)
	}

	var g grants.Grant
	switch sub {
	case "request":
		req.Classes = classes
		if req.Target == "" || req.Duration == "" || req.Reason == "" || (len(classes) == 0) == (req.Statement == "") {
			fs.Usage()
			return errors.New("grants request: --target, --duration, --reason and either --class or --statement are required")
		}
		err = c.do(ctx, "POST", "/v1/grants", req, &g)
	case "list":
		var list grants.ListResponse
		if err = c.do(ctx, "GET", "/v1/grants?"+q.Encode(), nil, &list); err == nil {
			if *asJSON {
				return printGrantsJSON(stdout, list)
			}
			return printGrantTable(stdout, list.Grants)
		}
	case "get":
		err = c.do(ctx, "GET", "/v1/grants/"+url.PathEscape(id), nil, &g)
	default:
		err = c.do(ctx, "POST", "/v1/grants/"+url.PathEscape(id)+"/"+sub, grants.NoteRequest{Note: note}, &g)
	}
	if err != nil {
		return fmt.Errorf("grants %s: %w", sub, err)
	}
	if *asJSON {
		return printGrantsJSON(stdout, g)
	}
	switch sub {
	case "request":
		fmt.Fprintf(stdout, "Requested grant %s: %s on %s for %s. It waits for an approver until %s.\nAn approver runs: %s\n",
			g.ID, grantAccess(g), safeText(g.Target), g.Duration, grantTime(g.PendingExpiresAt), grants.ApproveCommand(g.ID))
		return nil
	case "approve":
		fmt.Fprintf(stdout, "Approved grant %s: %s may use %s on %s until %s.\n", g.ID, grantRequester(g), grantAccess(g), safeText(g.Target), grantTime(g.ExpiresAt))
		return nil
	case "deny":
		fmt.Fprintf(stdout, "Denied grant %s.\n", g.ID)
		return nil
	case "revoke":
		fmt.Fprintf(stdout, "Revoked grant %s.\n", g.ID)
		return nil
	}
	return printGrant(stdout, g)
}

// parseInterspersed parses flags wherever they are, so that both
// "approve ID --note x" and "approve --note x ID" work.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
}

func getenvDefault(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// grantsClient calls the API as the person running the command.
type grantsClient struct {
	base  string
	token string
	http  *http.Client
}

func newGrantsClient(apiURL, tokenFile string, stderr io.Writer) (*grantsClient, error) {
	u, err := url.Parse(apiURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--api %q: expected an http:// or https:// URL", apiURL)
	}
	var tok string
	switch {
	case tokenFile != "":
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		if tok = strings.TrimSpace(string(b)); tok == "" {
			return nil, fmt.Errorf("--token-file %s is empty", tokenFile)
		}
	default:
		if tok = strings.TrimSpace(os.Getenv("SLUICE_TOKEN")); tok == "" {
			return nil, errors.New("no token: set SLUICE_TOKEN to your OIDC access token, or pass --token-file FILE")
		}
	}
	if ip := net.ParseIP(u.Hostname()); u.Scheme == "http" && u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
		fmt.Fprintf(stderr, "warning: sending your token to %s over plain http\n", u.Host)
	}
	return &grantsClient{base: strings.TrimRight(apiURL, "/"), token: tok, http: &http.Client{Timeout: grantsTimeout}}, nil
}

// grantsAPIError is the API's refusal, shown as its reason and code.
type grantsAPIError struct {
	status int
	body   grants.ErrorResponse
}

func (e *grantsAPIError) Error() string {
	msg := fmt.Sprintf("%s (%s, HTTP %d)", e.body.Reason, e.body.Error, e.status)
	if e.body.State != "" {
		msg += "; the grant is " + e.body.State
	}
	return msg
}

func (c *grantsClient) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach sluice's API: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("reading the API's answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		e := &grantsAPIError{status: resp.StatusCode}
		if json.Unmarshal(b, &e.body) != nil || e.body.Reason == "" {
			return fmt.Errorf("the API answered %s: %s", resp.Status, safeText(string(bytes.TrimSpace(b))))
		}
		return e
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("the API's answer is not what this sluice expects (%v); is --api sluice's API?", err)
	}
	return nil
}
