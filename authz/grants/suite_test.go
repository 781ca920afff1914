package grants

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// fakeClock is a Clock the test advances; it starts at the real time so
// that Redis TTLs computed from it are sane.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now().Truncate(time.Second)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var (
	agent    = policies.Principal{Issuer: "https://idp", Subject: "agent-1", Groups: []string{"agents"}, Client: "bot", OnBehalfOf: "alice"}
	agent2   = policies.Principal{Issuer: "https://idp", Subject: "agent-2"}
	bob      = policies.Principal{Issuer: "https://idp", Subject: "bob", Groups: []string{"dba-oncall"}}
	carol    = policies.Principal{Issuer: "https://idp", Subject: "carol", Groups: []string{"dba-oncall"}}
	idRegexp = regexp.MustCompile(`^gr_[a-z2-7]{20}$`)
)

func classReq(p policies.Principal, target string, classes ...policies.OperationClass) Grant {
	return Grant{Requester: IdentityOf(p), Target: target, Classes: classes, Duration: 15 * time.Minute, Reason: "ticket 42"}
}

// newStoreFunc makes an empty store with the options; each call is a store
// of its own.
type newStoreFunc func(t *testing.T, opts ...Option) Store

// runStoreSuite is the behaviour both stores share.
func runStoreSuite(t *testing.T, newStore newStoreFunc) {
	tests := []struct {
		name string
		run  func(t *testing.T, s Store, clk *fakeClock)
	}{
		{"CreateGet", testCreateGet},
		{"CreateInvalid", testCreateInvalid},
		{"CreateWithID", testCreateWithID},
		{"List", testList},
		{"ApproveActive", testApproveActive},
		{"FingerprintGrant", testFingerprintGrant},
		{"ExpiryByTimestamp", testExpiry},
		{"Deny", testDeny},
		{"Revoke", testRevoke},
		{"SelfApproval", testSelfApproval},
		{"NotFound", testNotFound},
		{"ApproveDenyRace", testRace},
		{"SubscribeOrder", testSubscribeOrder},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			tc.run(t, newStore(t, WithClock(clk), WithPendingTTL(30*time.Minute)), clk)
		})
	}
	t.Run("SlowSubscriberCutOff", func(t *testing.T) {
		testSlowSubscriber(t, newStore(t, WithSubscriberBuffer(2)))
	})
}

func mustCreate(t *testing.T, s Store, g Grant) Grant {
	t.Helper()
	out, err := s.Create(t.Context(), g)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return out
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}

func testCreateGet(t *testing.T, s Store, clk *fakeClock) {
	g := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite, policies.ClassDDL))
	if !idRegexp.MatchString(g.ID) {
		t.Errorf("ID %q is not gr_ and 20 base32 characters", g.ID)
	}
	now := clk.Now()
	if g.State != StatePending || !g.CreatedAt.Equal(now) || !g.PendingExpiresAt.Equal(now.Add(30*time.Minute)) {
		t.Errorf("created %+v, want pending at %v expiring 30m later", g, now)
	}
	got, err := s.Get(t.Context(), g.ID)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(g) {
		t.Errorf("Get = %+v\nwant   %+v", got, g)
	}
	if got.Requester.OnBehalfOf != "alice" || got.Requester.Client != "bot" || !slices.Equal(got.Classes, Classes{policies.ClassWrite, policies.ClassDDL}) {
		t.Errorf("Get lost fields: %+v", got)
	}
	if g2 := mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite)); g2.ID == g.ID {
		t.Errorf("two grants share ID %s", g.ID)
	}
}

// testCreateWithID: a caller that records a request before it exists
// chooses its ID; a reused or malformed ID stores nothing.
func testCreateWithID(t *testing.T, s Store, _ *fakeClock) {
	in := classReq(agent, "orders-db", policies.ClassWrite)
	in.ID = NewID()
	if !idRegexp.MatchString(in.ID) {
		t.Fatalf("NewID = %q", in.ID)
	}
	g := mustCreate(t, s, in)
	if g.ID != in.ID {
		t.Fatalf("created %s, want the chosen ID %s", g.ID, in.ID)
	}
	if _, err := s.Approve(t.Context(), g.ID, bob, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	again := classReq(agent2, "orders-db", policies.ClassRead)
	again.ID = g.ID
	_, err := s.Create(t.Context(), again)
	wantErr(t, err, ErrInvalid)
	if got, err := s.Get(t.Context(), g.ID); err != nil || got.State != StateApproved || got.Requester.Subject != agent.Subject {
		t.Errorf("after a Create reusing its ID: %+v, %v; want the approved grant untouched", got, err)
	}
	bad := classReq(agent, "orders-db", policies.ClassWrite)
	bad.ID = "gr_../../x"
	_, err = s.Create(t.Context(), bad)
	wantErr(t, err, ErrInvalid)
	if list, _ := s.List(t.Context(), Filter{}); len(list) != 1 {
		t.Errorf("store holds %d grants, want 1", len(list))
	}
}

func testCreateInvalid(t *testing.T, s Store, _ *fakeClock) {
	good := classReq(agent, "orders-db", policies.ClassWrite)
	cases := map[string]func(g *Grant){
		"empty target":    func(g *Grant) { g.Target = "" },
		"no requester":    func(g *Grant) { g.Requester = Identity{} },
		"both":            func(g *Grant) { g.Fingerprint = "fp1" },
		"neither":         func(g *Grant) { g.Classes = nil },
		"statement no fp": func(g *Grant) { g.Classes, g.Statement = nil, "DELETE FROM t" },
		"zero duration":   func(g *Grant) { g.Duration = 0 },
		"negative":        func(g *Grant) { g.Duration = -time.Minute },
		"too long":        func(g *Grant) { g.Duration = 1000 * time.Hour },
		"unknown class":   func(g *Grant) { g.Classes = Classes{42} },
	}
	for name, mutate := range cases {
		g := good
		mutate(&g)
		if _, err := s.Create(t.Context(), g); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
	if got, err := s.List(t.Context(), Filter{}); err != nil || len(got) != 0 {
		t.Errorf("invalid requests stored something: %v %v", got, err)
	}
}

func testList(t *testing.T, s Store, clk *fakeClock) {
	ctx := t.Context()
	var ids []string
	for _, req := range []Grant{
		classReq(agent, "orders-db", policies.ClassWrite),
		classReq(agent2, "orders-db", policies.ClassWrite),
		classReq(agent, "cluster-api", policies.ClassAdmin),
		classReq(agent2, "cluster-api", policies.ClassDDL),
		classReq(agent, "orders-db", policies.ClassDDL),
	} {
		ids = append(ids, mustCreate(t, s, req).ID)
		clk.Advance(time.Second)
	}
	if _, err := s.Approve(ctx, ids[0], bob, "ok", clk.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Deny(ctx, ids[3], bob, "no", clk.Now()); err != nil {
		t.Fatal(err)
	}
	listIDs := func(f Filter) []string {
		t.Helper()
		gs, err := s.List(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, g := range gs {
			out = append(out, g.ID)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		f    Filter
		want []string
	}{
		{"all newest first", Filter{}, []string{ids[4], ids[3], ids[2], ids[1], ids[0]}},
		{"target", Filter{Target: "orders-db"}, []string{ids[4], ids[1], ids[0]}},
		{"subject", Filter{Subject: "agent-2"}, []string{ids[3], ids[1]}},
		{"target and subject", Filter{Target: "orders-db", Subject: "agent-1"}, []string{ids[4], ids[0]}},
		{"pending", Filter{State: StatePending}, []string{ids[4], ids[2], ids[1]}},
		{"approved", Filter{State: StateApproved}, []string{ids[0]}},
		{"denied on target", Filter{Target: "cluster-api", State: StateDenied}, []string{ids[3]}},
		{"limit", Filter{Limit: 2}, []string{ids[4], ids[3]}},
		{"no match", Filter{Target: "nope"}, nil},
	} {
		if got := listIDs(tc.f); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	// State filters see expiry by time: the approval lasts 15m, the
	// pending requests 30m.
	clk.Advance(20 * time.Minute)
	if got, want := listIDs(Filter{State: StateExpired}), []string{ids[0]}; !slices.Equal(got, want) {
		t.Errorf("expired after 20m: got %v, want %v", got, want)
	}
}

func testNotFound(t *testing.T, s Store, clk *fakeClock) {
	ctx := t.Context()
	_, err := s.Get(ctx, "gr_doesnotexist")
	wantErr(t, err, ErrNotFound)
	for name, f := range map[string]func(context.Context, string, policies.Principal, string, time.Time) (Grant, error){
		"approve": s.Approve, "deny": s.Deny, "revoke": s.Revoke,
	} {
		if _, err := f(ctx, "gr_doesnotexist", bob, "", clk.Now()); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: got %v, want ErrNotFound", name, err)
		}
	}
}
