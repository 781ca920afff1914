package grants

import (
	"fmt"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// BenchmarkActive measures the hot-path lookup: a principal holding three
// active grants (and one revoked) on a target, among 1,000 grants of other
// principals.
//
//	go test -run '^$' -bench Active -benchmem ./authz/grants/
func BenchmarkActive(b *testing.B) {
	b.Run("embedded", func(b *testing.B) {
		benchActive(b, NewEmbeddedStore())
	})
	b.Run("redis", func(b *testing.B) {
		s, err := OpenRedis("redis://" + testenv.StartRedis(b) + "/0")
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		benchActive(b, s)
	})
}

func benchActive(b *testing.B, s Store) {
	ctx := b.Context()
	now := time.Now()
	approve := func(g Grant) string {
		g, err := s.Create(ctx, g)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Approve(ctx, g.ID, bob, "", now); err != nil {
			b.Fatal(err)
		}
		return g.ID
	}
	for i := range 1000 {
		other := policies.Principal{Issuer: "https://idp", Subject: fmt.Sprintf("agent-%d", i+100)}
		approve(classReq(other, "orders-db", policies.ClassWrite))
	}
	approve(classReq(agent, "orders-db", policies.ClassWrite))
	approve(classReq(agent, "orders-db", policies.ClassDDL))
	approve(Grant{Requester: IdentityOf(agent), Target: "orders-db", Fingerprint: "fp-1", Statement: "DELETE FROM t", Duration: time.Hour})
	gone := approve(classReq(agent, "orders-db", policies.ClassAdmin))
	if _, err := s.Revoke(ctx, gone, bob, "", now); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		a, err := s.Active(ctx, agent, "orders-db", now)
		if err != nil || len(a) != 3 {
			b.Fatalf("Active = %v, %v", a, err)
		}
	}
}
