package envoysim

import (
	"net"
	"slices"
	"testing"
)

// stubFilter records the calls the filter manager makes.
type stubFilter struct {
	name      string
	log       *[]string
	newConn   filterStatus
	data      filterStatus
	rcb       *activeReadFilter
	wcb       *activeWriteFilter
	drainRead bool
}

func (f *stubFilter) initializeReadFilterCallbacks(cb *activeReadFilter)   { f.rcb = cb }
func (f *stubFilter) initializeWriteFilterCallbacks(cb *activeWriteFilter) { f.wcb = cb }
func (f *stubFilter) onNewConnection() filterStatus {
	*f.log = append(*f.log, f.name+".onNewConnection")
	return f.newConn
}

func (f *stubFilter) onData(b *buffer, end bool) filterStatus {
	*f.log = append(*f.log, f.name+".onData("+b.String()+")")
	if f.drainRead {
		b.drain(b.Len())
	}
	return f.data
}

func (f *stubFilter) onWrite(b *buffer, end bool) filterStatus {
	*f.log = append(*f.log, f.name+".onWrite("+b.String()+")")
	return continueIteration
}

// newTestConn is a connection whose filter manager the test drives directly,
// on the test goroutine, standing in for the dispatcher.
func newTestConn(t *testing.T, closeThroughFM bool) *conn {
	a, b := net.Pipe()
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	s := New(WithCloseThroughFilterManager(closeThroughFM))
	return newConn(s, newDispatcher(), a, false)
}

// Contract §0.1: a filter skipped by an earlier StopIteration in
// onNewConnection gets onNewConnection just before its first onData, and
// injection resumes after the injecting filter.
func TestFilterManagerDeferredOnNewConnectionAndInjection(t *testing.T) {
	var log []string
	c := newTestConn(t, false)
	a := &stubFilter{name: "a", log: &log, newConn: stopIteration, data: stopIteration, drainRead: true}
	b := &stubFilter{name: "b", log: &log, data: continueIteration}
	c.fm.addReadFilter(a)
	c.fm.addReadFilter(b)
	c.fm.initializeReadFilters()
	c.readBuf.add([]byte("x"))
	c.fm.onRead()
	a.rcb.injectReadDataToFilterChain([]byte("y"), false)
	want := []string{"a.onNewConnection", "a.onData(x)", "b.onNewConnection", "b.onData(y)"}
	if !slices.Equal(log, want) {
		t.Fatalf("calls %q, want %q", log, want)
	}
}

// Contract §0.1: write filters run in reverse order; an injected write
// continues after the injecting filter.
func TestFilterManagerWriteOrder(t *testing.T) {
	var log []string
	c := newTestConn(t, false)
	f1 := &stubFilter{name: "1", log: &log}
	f2 := &stubFilter{name: "2", log: &log}
	f3 := &stubFilter{name: "3", log: &log}
	for _, f := range []*stubFilter{f1, f2, f3} {
		c.fm.addWriteFilter(f)
	}
	c.write([]byte("w"), false)
	f2.wcb.injectWriteDataToFilterChain([]byte("i"), false)
	want := []string{"3.onWrite(w)", "2.onWrite(w)", "1.onWrite(w)", "1.onWrite(i)"}
	if !slices.Equal(log, want) {
		t.Fatalf("calls %q, want %q", log, want)
	}
}

// Contract §0.1: disableClose counts once per filter; with the flag on a
// FlushWrite close is latched while gated and performed at count 0, and only
// injected writes pass meanwhile. With the flag off nothing is latched.
func TestFilterManagerCloseGating(t *testing.T) {
	for _, flag := range []bool{false, true} {
		var log []string
		c := newTestConn(t, flag)
		f := &stubFilter{name: "f", log: &log}
		c.fm.addReadFilter(f)
		c.fm.addWriteFilter(f)
		f.rcb.disableClose(true)
		f.rcb.disableClose(true)
		if c.fm.pendingCloseCount != 1 {
			t.Fatalf("pending close count %d after two disableClose(true)", c.fm.pendingCloseCount)
		}
		c.close(closeFlushWrite, "test")
		if !flag {
			if c.state != stateClosed {
				t.Fatal("flag off: the close waited for the filter")
			}
			continue
		}
		if c.state != stateOpen || !c.fm.localClosePending {
			t.Fatalf("flag on: state %v, local close pending %v", c.state, c.fm.localClosePending)
		}
		c.write([]byte("plain"), false)
		f.wcb.injectWriteDataToFilterChain([]byte("injected"), false)
		if len(log) != 0 {
			t.Fatalf("write filters ran: %q", log)
		}
		if c.unflushed != 1 {
			t.Fatalf("%d writes queued, want only the injected one", c.unflushed)
		}
		f.rcb.disableClose(false)
		if c.state == stateOpen {
			t.Fatal("the latched close was not performed at count 0")
		}
	}
}
