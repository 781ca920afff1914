package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policies"
)

const auditUsage = `Usage:
  sluice audit verify --config FILE [--public-key FILE]
      check every chain and checkpoint signature of the audit store; exits non-zero
      and names the first altered, inserted, reordered or missing event
  sluice audit query (--config FILE | --api URL) [filters] [--output table|json]
      list events newest first. --config reads the store directly (read-only);
      --api (or SLUICE_API) asks GET /v1/audit with the bearer token in SLUICE_TOKEN.
      filters: --principal --target --since --until --kind --class --decision
               --grant --text; --limit N, --cursor C, --all (every page)
      times: RFC 3339 (2025-01-31T02:00:00Z, 2025-01-31T02:00+02:00),
             "2025-01-31 02:00" (UTC), HH:MM (today, UTC) or a duration ago (15m);
             --since must be before --until
      events the store holds but cannot decode are listed on stderr ("skipped")
  sluice audit keygen --out FILE
      write a new ed25519 signing key (PEM, mode 0600) for audit.signing_key_file,
      its public key to FILE.pub, and print the public key
`

// auditCmd runs "sluice audit …".
func auditCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, auditUsage)
		return errors.New("audit: expected verify, query or keygen")
	}
	switch args[0] {
	case "verify":
		return auditVerify(ctx, args[1:], stdout, stderr)
	case "query":
		return auditQuery(ctx, args[1:], stdout, stderr)
	case "keygen":
		return auditKeygen(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, auditUsage)
		return nil
	}
	fmt.Fprint(stderr, auditUsage)
	return fmt.Errorf("audit: unknown command %q", args[0])
}

func auditFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("sluice audit "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, auditUsage) }
	return fs
}

func noArgs(fs *flag.FlagSet) error {
	if fs.NArg() > 0 {
		return fmt.Errorf("audit %s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

// openAuditStore opens the store a config names, read-only.
func openAuditStore(ctx context.Context, path string, extra ...audit.Option) (audit.Store, error) {
	cfg, err := policies.LoadFile(path)
	if err != nil {
		return nil, err
	}
	return audit.OpenConfig(ctx, cfg, nil, append([]audit.Option{audit.ReadOnly()}, extra...)...)
}

func auditVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := auditFlags("verify", stderr)
	cfgPath := fs.String("config", "", "sluice config naming audit.store and audit.signing_key_file (required)")
	pubPath := fs.String("public-key", "", "trust checkpoints signed by this key as well (PEM public key or a signing key file)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	if *cfgPath == "" {
		return errors.New("audit verify: --config is required")
	}
	var extra []audit.Option
	if *pubPath != "" {
		k, err := audit.LoadPublicKey(*pubPath)
		if err != nil {
			return fmt.Errorf("audit verify: --public-key: %w", err)
		}
		extra = append(extra, audit.WithTrustedKeys(k))
	}
	s, err := openAuditStore(ctx, *cfgPath, extra...)
	if err != nil {
		return err
	}
	defer s.Close()
	rep, err := s.Verify(ctx)
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, rep.String())
	return rep.Err()
}

func auditQuery(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := auditFlags("query", stderr)
	cfgPath := fs.String("config", "", "read the audit store this config names, directly")
	api := fs.String("api", os.Getenv("SLUICE_API"), "sluice API base URL (token in SLUICE_TOKEN)")
	principal := fs.String("principal", "", "subject, client or on-behalf-of")
	target := fs.String("target", "", "target name")
	since := fs.String("since", "", "from this time (inclusive)")
	until := fs.String("until", "", "to this time (exclusive)")
	kind := fs.String("kind", "", "event kind (statement, http.request, authz.decision, grant.approved, …)")
	class := fs.String("class", "", "operation class: read, write, ddl, admin, unknown")
	decision := fs.String("decision", "", "allow, deny, approval_required (or a grant state: pending, approved, denied, revoked, expired)")
	grant := fs.String("grant", "", "grant id")
	text := fs.String("text", "", "substring of the statement, request or reason")
	limit := fs.Int("limit", 50, fmt.Sprintf("events per page (1 to %d)", audit.MaxQueryLimit))
	cursor := fs.String("cursor", "", "continue from a previous page")
	all := fs.Bool("all", false, "follow every page")
	output := fs.String("output", "table", "table or json (one JSON object per line)")
	fs.StringVar(output, "o", "table", "shorthand for --output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	if *output != "table" && *output != "json" {
		return fmt.Errorf("audit query: --output: expected table or json, got %q", *output)
	}
	if *cfgPath != "" && isSet(fs, "api") {
		return errors.New("audit query: give --config or --api, not both")
	}
	if *limit < 1 || *limit > audit.MaxQueryLimit {
		return fmt.Errorf("audit query: --limit: expected 1 to %d, got %d", audit.MaxQueryLimit, *limit)
	}
	now := time.Now()
	q := url.Values{}
	for k, v := range map[string]string{"principal": *principal, "target": *target, "kind": *kind, "class": *class,
		"decision": *decision, "grant_id": *grant, "q": *text, "cursor": *cursor, "limit": strconv.Itoa(*limit)} {
		if v != "" {
			q.Set(k, v)
		}
	}
	for k, v := range map[string]string{"since": *since, "until": *until} {
		t, err := audit.ParseTime(v, now)
		if err != nil {
			return fmt.Errorf("audit query: --%s: %w", k, err)
		}
		if !t.IsZero() {
			q.Set(k, t.UTC().Format(time.RFC3339Nano))
		}
	}
	// Every filter is checked here, before the store or the API is asked,
	// so that a bad one is a usage error naming its flag.
	if _, err := audit.FilterFromQuery(q, now); err != nil {
		var pe *audit.ParamError
		if errors.As(err, &pe) {
			return fmt.Errorf("audit query: --%s: %w", queryFlags[pe.Param], pe.Err)
		}
		return fmt.Errorf("audit query: %w", err)
	}

	var fetch func(ctx context.Context, q url.Values) (audit.Page, error)
	switch {
	case *cfgPath != "":
		s, err := openAuditStore(ctx, *cfgPath)
		if err != nil {
			return err
		}
		defer s.Close()
		fetch = func(ctx context.Context, q url.Values) (audit.Page, error) {
			f, err := audit.FilterFromQuery(q, now)
			if err != nil {
				return audit.Page{}, err
			}
			return s.Query(ctx, f)
		}
	case *api != "":
		fetch = func(ctx context.Context, q url.Values) (audit.Page, error) { return fetchAPI(ctx, *api, q) }
	default:
		fs.Usage()
		return errors.New("audit query: give --config FILE (read the store) or --api URL with SLUICE_TOKEN")
	}

	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if *output == "table" {
		fmt.Fprintln(tw, "TIME (UTC)\tKIND\tPRINCIPAL\tTARGET\tDECISION\tCLASSES\tTABLES\tROWS\tREQUEST")
	}
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	for {
		page, err := fetch(ctx, q)
		if err != nil {
			return fmt.Errorf("audit query: %w", err)
		}
		for _, sk := range page.Skipped {
			fmt.Fprintf(stderr, "skipped: chain %s event seq %d: %s\n", sk.Writer, sk.Seq, sk.Error)
		}
		for _, r := range page.Records {
			if *output == "json" {
				if err := enc.Encode(r); err != nil {
					return err
				}
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.Time.UTC().Format("2006-01-02 15:04:05.000"), r.Kind,
				who(r.Principal), dash(r.Target), dash(r.Decision), dash(joinClasses(r.Classes)), dash(strings.Join(r.Tables, ",")), r.Rows, clip(r.Request, 80))
		}
		if page.Next == "" || !*all {
			tw.Flush()
			if page.Next != "" {
				fmt.Fprintf(stderr, "more: --cursor %s\n", page.Next)
			}
			return nil
		}
		q.Set("cursor", page.Next)
	}
}

// queryFlags maps GET /v1/audit's parameters to the flags that set them.
var queryFlags = map[string]string{"principal": "principal", "target": "target", "since": "since", "until": "until",
	"kind": "kind", "class": "class", "decision": "decision", "grant_id": "grant", "q": "text", "limit": "limit", "cursor": "cursor"}

func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func fetchAPI(ctx context.Context, base string, q url.Values) (audit.Page, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/v1/audit?"+q.Encode(), nil)
	if err != nil {
		return audit.Page{}, err
	}
	tok := os.Getenv("SLUICE_TOKEN")
	if tok == "" {
		return audit.Page{}, errors.New("SLUICE_TOKEN is not set: the API needs an auditor's bearer token")
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return audit.Page{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error, Reason string }
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e)
		return audit.Page{}, fmt.Errorf("%s: %s (%s)", resp.Status, e.Reason, e.Error)
	}
	var page audit.Page
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		return audit.Page{}, fmt.Errorf("decode response: %w", err)
	}
	return page, nil
}

func who(p policies.Principal) string {
	s := dash(p.Subject)
	if p.OnBehalfOf != "" {
		s += " (for " + p.OnBehalfOf + ")"
	}
	return s
}

func joinClasses(cs []policies.OperationClass) string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.String()
	}
	return strings.Join(out, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func clip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func auditKeygen(args []string, stdout, stderr io.Writer) error {
	fs := auditFlags("keygen", stderr)
	out := fs.String("out", "", "file for the private key (required; never overwritten)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("audit keygen: --out is required")
	}
	priv, pub, err := audit.GenerateKey()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("audit keygen: %w", err)
	}
	if _, err := f.Write(priv); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.WriteFile(*out+".pub", pub, 0o644); err != nil {
		return fmt.Errorf("audit keygen: %w", err)
	}
	k, err := audit.LoadPublicKey(*out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (key id %s) and %s.pub; set audit.signing_key_file: %s\n%s", *out, audit.KeyID(k), *out, *out, pub)
	return nil
}
