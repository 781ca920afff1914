package policies_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

const decisionConfig = `
identity:
  issuers: [{ issuer: https://idp.example.com, audiences: [sluice] }]
approvers: { groups: [dba] }
targets:
  - { name: orders, kind: postgres, port: 15432, upstream: 127.0.0.1:5432, database: orders, credentials: { user: app } }
  - { name: other, kind: postgres, port: 15433, upstream: 127.0.0.1:5432, database: other, credentials: { user: app } }
policies:
  - name: agents
    targets: [orders]
    principals: { groups: [agents] }
    allow: [read]
    require_grant: [write]
    deny: [ddl, admin, unknown]
    mask: [pii]
    max_rows: 1000
    wait: 30s
  - name: strict-bot
    targets: [orders]
    principals: { subjects: [bot-7], clients: [etl] }
    allow: [read, write]
    mask: [cards]
    max_rows: 10
    max_bytes: 4096
  - name: everyone-reads-other
    targets: [other]
    principals: { groups: ["*"] }
    allow: [read]
masking:
  - { name: pii, columns: ["*.email"] }
  - { name: cards, detectors: [credit_card] }
`

func TestDecide(t *testing.T) {
	cfg, err := policies.Load("decision.yaml", []byte(decisionConfig))
	if err != nil {
		t.Fatal(err)
	}
	agent := policies.Principal{Subject: "agent-1", Groups: []string{"agents"}}
	bot := policies.Principal{Subject: "bot-7", Groups: []string{"agents"}}
	stranger := policies.Principal{Subject: "eve"}
	R, W, D, A, U := policies.ClassRead, policies.ClassWrite, policies.ClassDDL, policies.ClassAdmin, policies.ClassUnknown
	writeGrant := policies.Grant{ID: "g-1", Classes: []policies.OperationClass{W}}
	stmtGrant := policies.Grant{ID: "g-2", Fingerprint: "fp-delete-old"}

	cases := []struct {
		name     string
		p        policies.Principal
		target   string
		classes  []policies.OperationClass
		fp       string
		grants   []policies.Grant
		outcome  policies.Outcome
		class    policies.OperationClass
		reason   string
		grantID  string
		masks    string
		maxRows  int64
		maxBytes int64
		wait     time.Duration
	}{
		{name: "read allowed with mask", p: agent, target: "orders", classes: []policies.OperationClass{R}, outcome: policies.Allow, class: R, reason: "allowed by policy agents", masks: "pii", maxRows: 1000},
		{name: "write needs grant", p: agent, target: "orders", classes: []policies.OperationClass{W}, outcome: policies.ApprovalRequired, class: W, reason: "needs an approved grant (policy agents)", wait: 30 * time.Second},
		{name: "write with class grant", p: agent, target: "orders", classes: []policies.OperationClass{W}, grants: []policies.Grant{writeGrant}, outcome: policies.Allow, class: W, grantID: "g-1", masks: "pii"},
		{name: "statement grant matches fingerprint", p: agent, target: "orders", classes: []policies.OperationClass{W}, fp: "fp-delete-old", grants: []policies.Grant{stmtGrant}, outcome: policies.Allow, grantID: "g-2"},
		{name: "statement grant does not cover another statement", p: agent, target: "orders", classes: []policies.OperationClass{W}, fp: "fp-other", grants: []policies.Grant{stmtGrant}, outcome: policies.ApprovalRequired, wait: 30 * time.Second},
		{name: "ddl denied", p: agent, target: "orders", classes: []policies.OperationClass{D}, outcome: policies.Deny, class: D, reason: "ddl is denied on orders by policy agents"},
		{name: "deny beats approval in one statement", p: agent, target: "orders", classes: []policies.OperationClass{R, W, A}, outcome: policies.Deny, class: A},
		{name: "approval beats allow in one statement", p: agent, target: "orders", classes: []policies.OperationClass{R, W}, outcome: policies.ApprovalRequired, class: W, wait: 30 * time.Second},
		{name: "deny beats another policy's allow", p: bot, target: "orders", classes: []policies.OperationClass{D}, outcome: policies.Deny},
		{name: "approval beats another policy's allow", p: bot, target: "orders", classes: []policies.OperationClass{W}, outcome: policies.ApprovalRequired, wait: 30 * time.Second},
		{name: "tightest budgets and every mask", p: bot, target: "orders", classes: []policies.OperationClass{R}, outcome: policies.Allow, masks: "pii,cards", maxRows: 10, maxBytes: 4096},
		{name: "client selects a policy", p: policies.Principal{Subject: "x", Client: "etl"}, target: "orders", classes: []policies.OperationClass{W}, outcome: policies.Allow, masks: "cards"},
		{name: "nothing matching denies", p: stranger, target: "orders", classes: []policies.OperationClass{R}, outcome: policies.Deny, reason: "no policy grants eve access to target orders"},
		{name: "unknown target denies", p: agent, target: "nope", classes: []policies.OperationClass{R}, outcome: policies.Deny},
		{name: "unclassified is unknown", p: agent, target: "orders", outcome: policies.Deny, class: U},
		{name: "class no list names is denied", p: stranger, target: "other", classes: []policies.OperationClass{W}, outcome: policies.Deny, reason: "no policy allows write on other"},
		{name: "wildcard group", p: stranger, target: "other", classes: []policies.OperationClass{R}, outcome: policies.Allow},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := cfg.Decide(policies.Request{Principal: c.p, Target: c.target, Classes: c.classes, Fingerprint: c.fp}, c.grants)
			if d.Outcome != c.outcome {
				t.Fatalf("outcome %v (%s), want %v", d.Outcome, d.Reason, c.outcome)
			}
			if d.Reason == "" {
				t.Error("decision has no reason")
			}
			if c.class != 0 && d.Class != c.class {
				t.Errorf("class %v, want %v", d.Class, c.class)
			}
			if c.reason != "" && !strings.Contains(d.Reason, c.reason) {
				t.Errorf("reason %q, want it to contain %q", d.Reason, c.reason)
			}
			if d.GrantID != c.grantID {
				t.Errorf("grant %q, want %q", d.GrantID, c.grantID)
			}
			if c.outcome == policies.Allow && c.masks != "" && strings.Join(d.Masks, ",") != c.masks {
				t.Errorf("masks %v, want %s", d.Masks, c.masks)
			}
			if c.outcome != policies.Allow && len(d.Masks) != 0 {
				t.Errorf("a refusal carries masks %v", d.Masks)
			}
			if c.maxRows != 0 && d.MaxRows != c.maxRows {
				t.Errorf("max_rows %d, want %d", d.MaxRows, c.maxRows)
			}
			if c.maxBytes != 0 && d.MaxBytes != c.maxBytes {
				t.Errorf("max_bytes %d, want %d", d.MaxBytes, c.maxBytes)
			}
			if d.Wait != c.wait {
				t.Errorf("wait %v, want %v", d.Wait, c.wait)
			}
		})
	}
}

func BenchmarkDecide(b *testing.B) {
	cfg, err := policies.Load("decision.yaml", []byte(decisionConfig))
	if err != nil {
		b.Fatal(err)
	}
	req := policies.Request{Principal: policies.Principal{Subject: "agent-1", Groups: []string{"agents", "staff", "eu"}}, Target: "orders", Classes: []policies.OperationClass{policies.ClassRead, policies.ClassWrite}}
	grants := []policies.Grant{{ID: "g-1", Classes: []policies.OperationClass{policies.ClassWrite}}}
	b.ReportAllocs()
	for b.Loop() {
		if d := cfg.Decide(req, grants); d.Outcome != policies.Allow {
			b.Fatal(d.Reason)
		}
	}
}
