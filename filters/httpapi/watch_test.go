package httpapi

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// watchStream is a watch response as the API server streams it: one event
// per line, a Secret among them, with a blank line and a CRLF line that a
// proxy could have introduced.
const watchStream = `{"type":"ADDED","object":{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db","resourceVersion":"1"},"data":{"password":"aHVudGVyMg=="},"stringData":{"pin":"4242"}}}
{"type":"MODIFIED","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"cm"},"data":{"owner":"alice@example.com"}}}

{"type":"BOOKMARK","object":{"kind":"Secret","apiVersion":"v1","metadata":{"resourceVersion":"3"}}}` + "\r\n" +
	`{"type":"DELETED","object":{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db"},"data":{"password":"c2Vjb25k"}}}
{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version","code":410}}
`

var watchSeeds = []string{"aHVudGVyMg==", "4242", "c2Vjb25k", "alice@example.com"}

// maskLines is the expected output: each line masked on its own.
func maskLines(t *testing.T, r *JSONRules, stream string) string {
	t.Helper()
	var out []byte
	for _, line := range strings.SplitAfter(stream, "\n") {
		body := strings.TrimSuffix(line, "\n")
		if strings.TrimSpace(body) == "" {
			out = append(out, line...)
			continue
		}
		var err error
		if out, _, err = r.Mask(out, []byte(body), kube); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(line, "\n") {
			out = append(out, '\n')
		}
	}
	return string(out)
}

func feed(t *testing.T, m *LineMasker, chunks ...string) string {
	t.Helper()
	var out []byte
	var err error
	for _, c := range chunks {
		buf := []byte(c)
		if out, err = m.Write(out, buf); err != nil {
			t.Fatal(err)
		}
		for i := range buf { // the masker must have copied what it keeps
			buf[i] = '#'
		}
	}
	if out, err = m.Close(out); err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestLineMaskerSplitAtEveryOffset(t *testing.T) {
	r := mustRules(t, nil, []string{"email"})
	want := maskLines(t, r, watchStream)
	for _, s := range watchSeeds {
		if strings.Contains(want, s) {
			t.Fatalf("seed %q survives even unsplit:\n%s", s, want)
		}
	}
	for i := 0; i <= len(watchStream); i++ {
		m := r.NewLineMasker(kube, 0)
		if got := feed(t, m, watchStream[:i], watchStream[i:]); got != want {
			t.Fatalf("split at %d:\n got  %q\n want %q", i, got, want)
		}
		if rep := m.Report(); rep.Secrets != 2 || !slices.Equal(rep.Detectors, []string{"email"}) {
			t.Fatalf("split at %d: report %+v", i, rep)
		}
	}
	// Three chunks, the middle one short, at every offset.
	for i := 0; i+3 <= len(watchStream); i++ {
		m := r.NewLineMasker(kube, 0)
		if got := feed(t, m, watchStream[:i], watchStream[i:i+3], watchStream[i+3:]); got != want {
			t.Fatalf("chunks at %d,%d: got %q", i, i+3, got)
		}
	}
	// One byte at a time.
	var chunks []string
	for i := range len(watchStream) {
		chunks = append(chunks, watchStream[i:i+1])
	}
	m := r.NewLineMasker(kube, 0)
	if got := feed(t, m, chunks...); got != want {
		t.Fatalf("byte by byte: got %q", got)
	}
	rep := m.Report()
	wantPaths := []string{"$.object.data", "$.object.stringData", "$.object.data.owner"}
	if rep.Values != 4 || !slices.Equal(rep.Paths, wantPaths) {
		t.Errorf("report %+v, want 4 values at %v", rep, wantPaths)
	}
}

func TestLineMaskerLastLineWithoutNewline(t *testing.T) {
	m := (*JSONRules)(nil).NewLineMasker(kube, 0)
	got := feed(t, m, `{"type":"ADDED","object":{"kind":"Secret","data":{"k":"dg=="}}}`+"\n", `{"type":"ADDED","object":{"kind":"Secret","data":{"k":"dw=="}}}`)
	want := `{"type":"ADDED","object":{"kind":"Secret","data":{"k":"W21hc2tlZF0="}}}` + "\n" + `{"type":"ADDED","object":{"kind":"Secret","data":{"k":"W21hc2tlZF0="}}}`
	if got != want {
		t.Errorf("got %q", got)
	}
}

func TestLineMaskerBounds(t *testing.T) {
	line := `{"type":"ADDED","object":{}}`
	max := len(line)
	wantMsg := fmt.Sprintf("longer than %d bytes", max)

	// A line of exactly the bound passes, in pieces or whole.
	m := (*JSONRules)(nil).NewLineMasker(kube, max)
	if got := feed(t, m, line[:10], line[10:]+"\n"+line+"\n"); got != line+"\n"+line+"\n" {
		t.Errorf("got %q", got)
	}

	// One byte more does not: whole, grown across chunks, or unterminated.
	for _, chunks := range [][]string{
		{line + " \n"},
		{line[:20], line[20:], " "},
		{line + "\n", line[:5], line[5:] + "  \n"},
	} {
		m := (*JSONRules)(nil).NewLineMasker(kube, max)
		var out []byte
		var err error
		for _, c := range chunks {
			if out, err = m.Write(out, []byte(c)); err != nil {
				break
			}
		}
		if !errors.Is(err, ErrLineTooLong) || !strings.Contains(err.Error(), wantMsg) {
			t.Errorf("%q: error %v, want ErrLineTooLong", chunks, err)
		}
		// The error sticks: the stream is cut, not resumed.
		if _, err2 := m.Write(nil, []byte("{}\n")); !errors.Is(err2, ErrLineTooLong) {
			t.Errorf("%q: after the error, Write = %v", chunks, err2)
		}
		if _, err2 := m.Close(nil); !errors.Is(err2, ErrLineTooLong) {
			t.Errorf("%q: after the error, Close = %v", chunks, err2)
		}
	}
}

func TestLineMaskerInvalidEvent(t *testing.T) {
	m := (*JSONRules)(nil).NewLineMasker(kube, 0)
	out, err := m.Write(nil, []byte("{\"type\":\"ADDED\",\"object\":{}}\n{\"type\":\"ADDED\",\"object\":{\"kind\":\"Secret\",\"data\":{\"k\":\"dg==\"}}\n{}\n"))
	if !errors.Is(err, ErrInvalidJSON) || !strings.Contains(err.Error(), "watch event") {
		t.Fatalf("error %v, want ErrInvalidJSON", err)
	}
	// The lines before the bad one went through; nothing of it did.
	if string(out) != "{\"type\":\"ADDED\",\"object\":{}}\n" {
		t.Errorf("out %q", out)
	}
	if _, err := m.Write(nil, []byte("{}\n")); !errors.Is(err, ErrInvalidJSON) {
		t.Errorf("after the error, Write = %v", err)
	}

	m = (*JSONRules)(nil).NewLineMasker(kube, 0)
	if _, err := m.Write(nil, []byte(`{"type":`)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Close(nil); !errors.Is(err, ErrInvalidJSON) {
		t.Errorf("a truncated last event: Close = %v", err)
	}
}

func TestLineMaskerEmpty(t *testing.T) {
	m := (*JSONRules)(nil).NewLineMasker(kube, 0)
	out, err := m.Write(nil, nil)
	if err != nil || len(out) != 0 {
		t.Errorf("Write(nil) = %q, %v", out, err)
	}
	if out, err = m.Close(out); err != nil || len(out) != 0 {
		t.Errorf("Close = %q, %v", out, err)
	}
	if got := feed(t, (*JSONRules)(nil).NewLineMasker(kube, 0), "\n\n \n"); got != "\n\n \n" {
		t.Errorf("blank lines: %q", got)
	}
	if !bytes.Equal([]byte(feed(t, (*JSONRules)(nil).NewLineMasker(kube, 0), "{}\n")), []byte("{}\n")) {
		t.Error("an empty object changed")
	}
}
