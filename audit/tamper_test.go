package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// trail writes 30 events ("SELECT 1" … "SELECT 30") with a checkpoint
// every 10 and closes the store (final checkpoint at 30).
func trail(t *testing.T, e env, key ed25519.PrivateKey, closeIt bool) (url string, raw *rawDB, writer string) {
	t.Helper()
	url, raw = e.fresh(t)
	s := open(t, url, key, WithCheckpoints(10, time.Hour))
	for i := 1; i <= 30; i++ {
		if err := s.Append(context.Background(), statement("agent", "orders-db", fmt.Sprintf("SELECT %d", i), policies.ClassRead)); err != nil {
			t.Fatal(err)
		}
	}
	writer = s.Writer()
	if closeIt {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Cleanup(func() { s.Close() })
	}
	return url, raw, writer
}

// forge inserts a well-formed record with a correct hash and index
// columns: what an attacker who knows the format, but not the key, makes.
func forge(t *testing.T, raw *rawDB, r Record) {
	t.Helper()
	body, err := seal(&r)
	if err != nil {
		t.Fatal(err)
	}
	row := eventRow{writer: r.Writer, seq: r.Seq, hash: r.Hash[:], prev: r.Prev[:], body: string(body), ix: indexOf(r.Event)}
	raw.exec(t, insertEventSQL, row.args()...)
}

func storedRecord(t *testing.T, raw *rawDB, w string, seq int64) Record {
	t.Helper()
	body := raw.text(t, "SELECT body FROM audit_events WHERE writer = ? AND seq = ?", w, seq)
	r, err := decodeBody([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	r.Hash = sha256.Sum256([]byte(body))
	return r
}

// firstProblem verifies the store at url and returns its first problem,
// failing unless there is one of kind whose text contains want.
func firstProblem(t *testing.T, url string, key ed25519.PrivateKey, kind ProblemKind, want string) Problem {
	t.Helper()
	rep, err := openRO(t, url, key).Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() {
		t.Fatalf("tampering went unnoticed:\n%s", rep)
	}
	p := rep.Problems[0]
	t.Logf("verify: %s", p)
	if p.Kind != kind || !strings.Contains(p.String(), want) {
		t.Errorf("first problem = %s (%s), want %s …%s…", p, p.Kind, kind, want)
	}
	return p
}

func testTamper(t *testing.T, e env) {
	cases := []struct {
		name   string
		open   bool // leave the writer running (no final checkpoint)
		tamper func(t *testing.T, raw *rawDB, w string, other ed25519.PrivateKey)
		kind   ProblemKind
		want   string
	}{
		{"edit record", false, func(t *testing.T, raw *rawDB, w string, _ ed25519.PrivateKey) {
			raw.exec(t, "UPDATE audit_events SET body = replace(body, 'SELECT 17', 'SELECT 71') WHERE seq = 17")
		}, ProblemAltered, "event seq 17 altered (hash mismatch)"},
		{"edit column", false, func(t *testing.T, raw *rawDB, w string, _ ed25519.PrivateKey) {
			raw.exec(t, "UPDATE audit_events SET subject = 'someone-else' WHERE seq = 17")
		}, ProblemAltered, "event seq 17 altered (column subject differs from the hashed record)"},
		{"edit and rehash sealed event", false, func(t *testing.T, raw *rawDB, w string, _ ed25519.PrivateKey) {
			r := storedRecord(t, raw, w, 20)
			raw.exec(t, "DELETE FROM audit_events WHERE seq = 20")
			r.Request = "SELECT harmless"
			forge(t, raw, r)
		}, ProblemAltered, "event seq 20 altered (checkpoint"},
		{"edit and rehash", false, func(t *testing.T, raw *rawDB, w string, _ ed25519.PrivateKey) {
			r := storedRecord(t, raw, w, 17)
			raw.exec(t, "DELETE FROM audit_events WHERE seq = 17")
			r.Request = "SELECT harmless"
			forge(t, raw, r)
		}, ProblemInserted, "event seq 18 does not link to seq 17"},
		{"delete", false, func(t *testing.T, raw *rawDB, w string, _ ed25519.PrivateKey) {
			raw.exec(t, "DELETE FROM audit_events WHERE seq = 18")
		}, ProblemMissing, "event seq 18 missing"},
		{"delete several", false, func(t *testing.T, raw *rawDB, w string, _ ed25519.PrivateKey) {
			raw.exec(t, "DELETE FROM audit_events WHERE seq BETWEEN 12 AND 14")
		}, ProblemMissing, "events seq 12–14 missing"},
		{"truncate sealed tail", false, func(t *testing.T, raw *rawDB, w string, _ ed25519.PrivateKey) {
			raw.exec(t, "DELETE FROM audit_events WHERE seq > 25")
		}, ProblemMissing, "events seq 26–30 missing (checkpoint"},
		{"reorder", false, func(t *testing.T, raw *rawDB, w string, _ ed25519.PrivateKey) {
			raw.exec(t, "UPDATE audit_events SET seq = -1 WHERE seq = 17")
			raw.exec(t, "UPDATE audit_events SET seq = 17 WHERE seq = 18")
			raw.exec(t, "UPDATE audit_events SET seq = 18 WHERE seq = -1")
		}, ProblemReordered, "event seq 17 reordered (found after seq 18)"},
		{"insert in the middle", false, func(t *testing.T, raw *rawDB, w string, _ ed25519.PrivateKey) {
			prev := storedRecord(t, raw, w, 17)
			raw.exec(t, "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 18")
			raw.exec(t, "UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1018")
			fake := prev
			fake.Seq, fake.Prev, fake.Request = 18, prev.Hash, "SELECT innocent"
			forge(t, raw, fake)
		}, ProblemInserted, "inserted event at seq 18"},
		{"insert after close", false, func(t *testing.T, raw *rawDB, w string, _ ed25519.PrivateKey) {
			last := storedRecord(t, raw, w, 30)
			fake := last
			fake.Seq, fake.Prev = 31, last.Hash
			forge(t, raw, fake)
		}, ProblemInserted, "event seq 31 inserted after the chain's final checkpoint"},
		{"made-up chain", false, func(t *testing.T, raw *rawDB, w string, _ ed25519.PrivateKey) {
			r := storedRecord(t, raw, w, 1)
			r.Writer = "forged"
			forge(t, raw, r)
		}, ProblemInserted, "chain forged: event seq 1 inserted: the chain has no signed start"},
		{"checkpoint edited", false, func(t *testing.T, raw *rawDB, w string, _ ed25519.PrivateKey) {
			raw.exec(t, `UPDATE audit_checkpoints SET body = replace(body, '"seq":20', '"seq":19') WHERE seq = 20`)
		}, ProblemSignature, "signature invalid"},
		{"checkpoint signed by another key", false, func(t *testing.T, raw *rawDB, w string, other ed25519.PrivateKey) {
			raw.exec(t, "DELETE FROM audit_events WHERE seq > 25")
			raw.exec(t, "DELETE FROM audit_checkpoints WHERE seq > 25")
			cp := Checkpoint{Writer: w, Kind: CheckpointFinal, Seq: 25, Head: storedRecord(t, raw, w, 25).Hash, Time: time.Now()}
			body, _ := NewSigner(other).sign(&cp)
			raw.exec(t, insertCheckpointSQL, w, string(cp.Kind), cp.Seq, string(body), cp.Sig)
		}, ProblemSignature, "which is not trusted"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			key := newKey(t)
			url, raw, w := trail(t, e, key, !c.open)
			mustVerify(t, openRO(t, url, key))
			c.tamper(t, raw, w, newKey(t))
			p := firstProblem(t, url, key, c.kind, c.want)
			if !strings.HasPrefix(p.String(), "chain ") {
				t.Errorf("problem does not name its chain: %s", p)
			}
		})
	}
}

// testTamperWitnessed cuts a closed chain short together with its own
// checkpoints, which its own checkpoints cannot reveal: the start
// checkpoint of the chain opened after it witnessed its head.
func testTamperWitnessed(t *testing.T, e env) {
	cases := []struct {
		name   string
		tamper func(t *testing.T, raw *rawDB, w, next string)
		kind   ProblemKind
		want   string
	}{
		{"tail cut with its checkpoints", func(t *testing.T, raw *rawDB, w, _ string) {
			raw.exec(t, "DELETE FROM audit_events WHERE writer = ? AND seq > 12", w)
			raw.exec(t, "DELETE FROM audit_checkpoints WHERE writer = ? AND seq > 12", w)
		}, ProblemMissing, "events seq 13–30 missing (checkpoint"},
		{"chain deleted whole", func(t *testing.T, raw *rawDB, w, _ string) {
			raw.exec(t, "DELETE FROM audit_events WHERE writer = ?", w)
			raw.exec(t, "DELETE FROM audit_checkpoints WHERE writer = ?", w)
		}, ProblemMissing, "events seq 1–30 missing (checkpoint"},
		{"tail rewritten with its checkpoints", func(t *testing.T, raw *rawDB, w, _ string) {
			r := storedRecord(t, raw, w, 30)
			raw.exec(t, "DELETE FROM audit_events WHERE writer = ? AND seq = 30", w)
			raw.exec(t, "DELETE FROM audit_checkpoints WHERE writer = ? AND seq = 30", w)
			r.Request = "SELECT harmless"
			forge(t, raw, r)
		}, ProblemAltered, "event seq 30 altered (checkpoint"},
		{"witness removed with the next chain's start", func(t *testing.T, raw *rawDB, w, next string) {
			raw.exec(t, "DELETE FROM audit_checkpoints WHERE writer = ? AND kind = 'start'", next)
		}, ProblemMissing, "signed start checkpoint is missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			key := newKey(t)
			url, raw, w := trail(t, e, key, true)
			next := open(t, url, key)
			nextID := next.Writer()
			if err := next.Close(); err != nil {
				t.Fatal(err)
			}
			rep := mustVerify(t, openRO(t, url, key))
			if len(rep.Chains) != 2 {
				t.Fatalf("%d chains, want 2:\n%s", len(rep.Chains), rep)
			}
			c.tamper(t, raw, w, nextID)
			firstProblem(t, url, key, c.kind, c.want)
		})
	}
}

// testVerifyDuringRetention verifies while retention removes the oldest
// events chunk by chunk: every report must be clean, since Verify reads
// one snapshot.
func testVerifyDuringRetention(t *testing.T, e env) {
	url, _ := e.fresh(t)
	key := newKey(t)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	s := open(t, url, key, WithCheckpoints(10, time.Hour))
	defer s.Close()
	ctx := context.Background()
	const n = 200
	for i := 1; i <= n; i++ {
		ev := statement("agent", "orders-db", fmt.Sprintf("SELECT %d", i), policies.ClassRead)
		ev.Time = t0.Add(time.Duration(i) * time.Second)
		if err := s.Append(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	pruned := make(chan error, 1)
	go func() {
		for i := 5; i < n; i += 5 { // one retention checkpoint per step
			if _, err := s.Prune(ctx, t0.Add(time.Duration(i)*time.Second+time.Millisecond)); err != nil {
				pruned <- err
				return
			}
		}
		pruned <- nil
	}()
	ro := openRO(t, url, key)
	verified := 0
	for done := false; !done; {
		select {
		case err := <-pruned:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		default:
		}
		rep, err := ro.Verify(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() {
			t.Fatalf("verify during retention, after %d clean reports:\n%s", verified, rep)
		}
		verified++
	}
	t.Logf("%d clean reports while retention ran", verified)
}

// testTamperWitnessedLater: a chain running beside another (a second
// replica) witnesses the other's head in its periodic checkpoints, not
// only at its start, so a chain that began after it cannot be cut short
// either.
func testTamperWitnessedLater(t *testing.T, e env) {
	url, raw := e.fresh(t)
	key := newKey(t)
	ctx := context.Background()
	b := open(t, url, key, WithCheckpoints(5, 20*time.Millisecond)).(*store)
	a := open(t, url, key, WithCheckpoints(10, time.Hour))
	for i := 1; i <= 30; i++ {
		if err := a.Append(ctx, statement("agent", "orders-db", fmt.Sprintf("SELECT %d", i), policies.ClassRead)); err != nil {
			t.Fatal(err)
		}
	}
	aw := a.Writer()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to read a's head", 10*time.Second, func() bool {
		p := b.w.others.Load()
		return p != nil && slices.ContainsFunc(*p, func(h ChainHead) bool { return h.Writer == aw && h.Seq == 30 })
	})
	for i := 1; i <= 5; i++ { // a periodic checkpoint
		if err := b.Append(ctx, statement("agent", "orders-db", fmt.Sprintf("SELECT %d", i), policies.ClassRead)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, openRO(t, url, key))
	raw.exec(t, "DELETE FROM audit_events WHERE writer = ? AND seq > 12", aw)
	raw.exec(t, "DELETE FROM audit_checkpoints WHERE writer = ? AND seq > 12", aw)
	rep, err := openRO(t, url, key).Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("chain %s: events seq 13–30 missing (checkpoint", aw)
	if rep.OK() || !strings.Contains(rep.Problems[0].String(), want) || !strings.Contains(rep.Problems[0].String(), "of chain "+b.Writer()) {
		t.Fatalf("a's tail cut after b witnessed it:\n%s\nwant …%s… of chain %s", rep, want, b.Writer())
	}
}
