package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
)

// ProblemKind classifies what verification found.
type ProblemKind string

// Problem kinds.
const (
	ProblemAltered   ProblemKind = "altered"
	ProblemMissing   ProblemKind = "missing"
	ProblemInserted  ProblemKind = "inserted"
	ProblemReordered ProblemKind = "reordered"
	ProblemSignature ProblemKind = "signature"
)

// Problem is the first thing wrong with one chain.
type Problem struct {
	Writer string
	// Seq is the event the problem is at (0 for a checkpoint problem).
	Seq int64
	// Checkpoint is the checkpoint's id for a checkpoint problem.
	Checkpoint int64
	Kind       ProblemKind
	Detail     string
}

func (p Problem) String() string { return fmt.Sprintf("chain %s: %s", p.Writer, p.Detail) }

// ChainReport summarises one chain.
type ChainReport struct {
	Writer string
	// Base is the last seq removed by retention (0: none removed).
	Base int64
	// First and Last are the seqs of the first and last event present.
	First, Last int64
	Events      int64
	Checkpoints int
	// Sealed is the highest seq a valid checkpoint signs.
	Sealed int64
	// Closed is set when the chain ends with a final checkpoint.
	Closed  bool
	Problem *Problem
}

// Report is the result of Verify.
type Report struct {
	Chains      []ChainReport
	Checkpoints int
	// Problems holds the first problem of each chain, in chain order.
	Problems []Problem
	// Notes are facts worth knowing that are not tampering: an unsealed
	// tail, signatures checked without a trusted key.
	Notes []string
}

// OK reports whether every chain verified.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// Err returns the first problem as an error, or nil.
func (r *Report) Err() error {
	if r.OK() {
		return nil
	}
	return fmt.Errorf("audit trail does not verify: %s", r.Problems[0])
}

// Verify reads the whole store in one snapshot (retention or a replica
// starting while it reads would otherwise look like tampering) and checks
// every chain against its own checkpoints and against the heads other
// chains' start checkpoints witnessed.
func (s *store) Verify(ctx context.Context) (*Report, error) {
	var rep *Report
	err := s.db.snapshot(ctx, func(q querier) error {
		var err error
		rep, err = s.verify(ctx, q)
		return err
	})
	return rep, err
}

func (s *store) verify(ctx context.Context, q querier) (*Report, error) {
	rep := &Report{}
	cps, err := checkpointRows(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("audit verify: read checkpoints: %w", err)
	}
	rep.Checkpoints = len(cps)
	if len(s.opts.trusted) == 0 {
		rep.Notes = append(rep.Notes, "no trusted key given: each checkpoint was checked against the key it names, which proves the chain consistent but not who signed it")
	}
	valid := map[string][]Checkpoint{}
	witnessed := map[string][]witness{}
	bad := map[string]*Problem{}
	for _, row := range cps {
		cp, p := s.checkCheckpoint(row)
		if p != nil {
			if bad[row.writer] == nil {
				bad[row.writer] = p
			}
			continue
		}
		valid[cp.Writer] = append(valid[cp.Writer], cp)
		for _, h := range cp.Witness {
			witnessed[h.Writer] = append(witnessed[h.Writer], witness{ChainHead: h, by: cp})
		}
	}
	ws, err := writers(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("audit verify: list chains: %w", err)
	}
	for w := range witnessed { // a chain deleted whole is still witnessed
		if !slices.Contains(ws, w) {
			ws = append(ws, w)
		}
	}
	slices.Sort(ws)
	for _, w := range ws {
		cr := ChainReport{Writer: w, Checkpoints: len(valid[w])}
		cr.Problem = bad[w]
		if cr.Problem == nil {
			if cr.Problem, err = s.walk(ctx, q, &cr, valid[w], witnessed[w], rep); err != nil {
				return nil, err
			}
		}
		if cr.Problem != nil {
			rep.Problems = append(rep.Problems, *cr.Problem)
		}
		rep.Chains = append(rep.Chains, cr)
	}
	return rep, nil
}

// witness is a chain head that another chain's checkpoint signed.
type witness struct {
	ChainHead
	by Checkpoint
}

func (s *store) checkCheckpoint(row storedCheckpoint) (Checkpoint, *Problem) {
	prob := func(k ProblemKind, f string, a ...any) *Problem {
		return &Problem{Writer: row.writer, Checkpoint: row.id, Kind: k, Detail: fmt.Sprintf("checkpoint %d ", row.id) + fmt.Sprintf(f, a...)}
	}
	cp, err := decodeCheckpoint([]byte(row.body))
	if err != nil {
		return cp, prob(ProblemAltered, "altered (unreadable: %v)", err)
	}
	if !ed25519.Verify(cp.Key, []byte(row.body), row.sig) {
		return cp, prob(ProblemSignature, "signature invalid")
	}
	if len(s.opts.trusted) > 0 && !trusted(s.opts.trusted, cp.Key) {
		return cp, prob(ProblemSignature, "signed by key %s, which is not trusted", KeyID(cp.Key))
	}
	if cp.Writer != row.writer || string(cp.Kind) != row.kind || cp.Seq != row.seq {
		return cp, prob(ProblemAltered, "altered (its columns differ from the signed record)")
	}
	cp.ID, cp.Sig = row.id, row.sig
	return cp, nil
}

func trusted(keys []ed25519.PublicKey, k ed25519.PublicKey) bool {
	for _, t := range keys {
		if t.Equal(k) {
			return true
		}
	}
	return false
}

// walk checks one chain's events in seq order against each other and its
// valid checkpoints, and returns its first problem.
//
// Heads witnessed by other chains' checkpoints count as seals of this
// one: the chain must reach each of them, with the hash it had then.
// Retention may have removed a witnessed event since (seq <= base).
func (s *store) walk(ctx context.Context, q querier, cr *ChainReport, cps []Checkpoint, wits []witness, rep *Report) (*Problem, error) {
	w := cr.Writer
	prob := func(seq int64, k ProblemKind, f string, a ...any) *Problem {
		return &Problem{Writer: w, Seq: seq, Kind: k, Detail: fmt.Sprintf(f, a...)}
	}
	var base int64
	var prev Hash
	haveBase, final := false, int64(-1)
	seals := map[int64]Checkpoint{}
	for _, cp := range cps { // in id order: the last retention checkpoint wins
		switch {
		case cp.Kind == CheckpointRetention:
			base, prev, haveBase = cp.Seq, cp.Head, true
		case cp.Kind == CheckpointStart && cp.Seq == 0 && !haveBase:
			haveBase = true
		}
	}
	var witnessedTo witness
	for _, h := range wits {
		if h.Seq > base { // the chain's own checkpoints, below, take precedence
			seals[h.Seq] = Checkpoint{ID: h.by.ID, Writer: h.by.Writer, Seq: h.Seq, Head: h.Head}
		}
		if h.Seq > witnessedTo.Seq {
			witnessedTo = h
		}
	}
	for _, cp := range cps {
		if cp.Seq > base {
			seals[cp.Seq] = cp
		}
		cr.Sealed = max(cr.Sealed, cp.Seq)
		switch cp.Kind {
		case CheckpointFinal:
			final, cr.Closed = cp.Seq, true
		case CheckpointResume: // a replica with a fixed id reopened its chain
			final, cr.Closed = -1, false
		}
	}
	cr.Base = base
	rs, err := q.query(ctx, selectEventSQL+" WHERE writer = ? ORDER BY seq", w)
	if err != nil {
		return nil, fmt.Errorf("audit verify: read chain %s: %w", w, err)
	}
	defer rs.Close()
	next := func() (*storedEvent, error) {
		if !rs.Next() {
			return nil, rs.Err()
		}
		e, err := scanEvent(rs)
		return &e, err
	}
	cur, err := next()
	if err != nil {
		return nil, err
	}
	if cur != nil && !haveBase && len(cps) == 0 {
		return prob(cur.seq, ProblemInserted, "event seq %d inserted: the chain has no signed start or retention checkpoint", cur.seq), nil
	}
	// A chain with checkpoints but neither a start nor a retention one has
	// lost its beginning: expect seq 1, and the walk reports what is gone.
	exp := base + 1
	for cur != nil {
		nxt, err := next()
		if err != nil {
			return nil, err
		}
		if p := checkEvent(w, cur, nxt, exp, prev, base, final, seals, prob); p != nil {
			return p, nil
		}
		if cr.Events == 0 {
			cr.First = cur.seq
		}
		cr.Events++
		cr.Last = cur.seq
		prev, _ = hashFrom(cur.hash)
		exp++
		cur = nxt
	}
	last := exp - 1
	if witnessedTo.Seq > max(last, base) {
		return prob(last+1, ProblemMissing, "%s missing (checkpoint %d of chain %s witnessed seq %d)", seqRange(last+1, witnessedTo.Seq), witnessedTo.by.ID, witnessedTo.by.Writer, witnessedTo.Seq), nil
	}
	if cr.Sealed > last {
		return prob(last+1, ProblemMissing, "%s missing (checkpoint %d sealed seq %d)", seqRange(last+1, cr.Sealed), seals[cr.Sealed].ID, cr.Sealed), nil
	}
	if !haveBase && len(cps) > 0 {
		// Nothing else is wrong, but the start's witness of the other
		// chains is gone with it.
		return prob(0, ProblemMissing, "the chain's signed start checkpoint is missing, and no retention checkpoint replaces it"), nil
	}
	if last > cr.Sealed {
		rep.Notes = append(rep.Notes, fmt.Sprintf("chain %s: %s follow its last checkpoint and are not sealed yet (the writer is running, or stopped without closing)", w, seqRange(cr.Sealed+1, last)))
	}
	return nil, nil
}

// checkEvent checks the event that should be seq exp, following prev.
func checkEvent(w string, cur, nxt *storedEvent, exp int64, prev Hash, base, final int64, seals map[int64]Checkpoint,
	prob func(int64, ProblemKind, string, ...any) *Problem) *Problem {
	if cur.seq <= base {
		return prob(cur.seq, ProblemInserted, "event seq %d inserted (retention removed the chain up to seq %d)", cur.seq, base)
	}
	h := sha256.Sum256([]byte(cur.body))
	if !bytes.Equal(h[:], cur.hash) {
		return prob(cur.seq, ProblemAltered, "event seq %d altered (hash mismatch)", cur.seq)
	}
	r, err := decodeBody([]byte(cur.body))
	if err != nil {
		return prob(cur.seq, ProblemAltered, "event seq %d altered (record unreadable: %v)", cur.seq, err)
	}
	if r.Writer != w {
		return prob(cur.seq, ProblemInserted, "event seq %d inserted (its record belongs to chain %s)", cur.seq, r.Writer)
	}
	switch {
	case r.Seq < exp && r.Seq == exp-1:
		return prob(r.Seq, ProblemInserted, "inserted event at seq %d (two records claim seq %d)", r.Seq, r.Seq)
	case r.Seq < exp:
		return prob(r.Seq, ProblemReordered, "event seq %d reordered (found after seq %d)", r.Seq, exp-1)
	case r.Seq > exp:
		if nxt != nil {
			if n, err := decodeBody([]byte(nxt.body)); err == nil && n.Seq == exp {
				return prob(exp, ProblemReordered, "event seq %d reordered (found after seq %d)", exp, r.Seq)
			}
		}
		return prob(exp, ProblemMissing, "%s missing", seqRange(exp, r.Seq-1))
	}
	if r.Prev != prev {
		return prob(r.Seq, ProblemInserted, "event seq %d does not link to seq %d: seq %d was replaced or seq %d inserted", r.Seq, r.Seq-1, r.Seq-1, r.Seq)
	}
	if cur.seq != r.Seq {
		return prob(r.Seq, ProblemAltered, "event seq %d altered (its seq column says %d)", r.Seq, cur.seq)
	}
	if col := cur.ix.diff(indexOf(r.Event)); col != "" && cur.ix.diff(rawIndexOf(r.Event)) != "" {
		return prob(r.Seq, ProblemAltered, "event seq %d altered (column %s differs from the hashed record)", r.Seq, col)
	}
	if cp, ok := seals[r.Seq]; ok && cp.Head != Hash(h) {
		by := ""
		if cp.Writer != w {
			by = " of chain " + cp.Writer
		}
		return prob(r.Seq, ProblemAltered, "event seq %d altered (checkpoint %d%s sealed another hash)", r.Seq, cp.ID, by)
	}
	if final >= 0 && r.Seq > final {
		return prob(r.Seq, ProblemInserted, "event seq %d inserted after the chain's final checkpoint", r.Seq)
	}
	return nil
}

func seqRange(a, b int64) string {
	if a == b {
		return fmt.Sprintf("event seq %d", a)
	}
	return fmt.Sprintf("events seq %d–%d", a, b)
}

// String renders the report as `sluice audit verify` prints it.
func (r *Report) String() string {
	var b strings.Builder
	for _, c := range r.Chains {
		state := "ok"
		if c.Problem != nil {
			state = "FAILED"
		}
		fmt.Fprintf(&b, "chain %s: %d events (seq %d–%d), base %d, %d checkpoints, sealed to %d, closed %v: %s\n",
			c.Writer, c.Events, c.First, c.Last, c.Base, c.Checkpoints, c.Sealed, c.Closed, state)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "PROBLEM: %s\n", p)
	}
	if r.OK() {
		fmt.Fprintf(&b, "verified: %d chains, %d checkpoints\n", len(r.Chains), r.Checkpoints)
	}
	return b.String()
}
