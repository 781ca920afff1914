package grants

import (
	"testing"

	"github.com/sluicehq/sluice/policies"
)

func TestEmbeddedStore(t *testing.T) {
	runStoreSuite(t, func(t *testing.T, opts ...Option) Store {
		return NewEmbeddedStore(opts...)
	})
}

// TestEmbeddedSlowSubscriber: a subscriber its buffer behind is cut off at
// once, and a live one still gets every event.
func TestEmbeddedSlowSubscriber(t *testing.T) {
	s := NewEmbeddedStore(WithSubscriberBuffer(2))
	slow, err := s.Subscribe(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	fast, err := s.Subscribe(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
		<-fast
	}
	if n := drain(slow); n != 2 {
		t.Errorf("slow subscriber got %d events before its channel closed, want 2", n)
	}
	mustCreate(t, s, classReq(agent, "orders-db", policies.ClassWrite))
	if ev := <-fast; ev.Kind != EventRequested {
		t.Errorf("live subscriber got %v", ev)
	}
}

// drain reads a closed channel to its end; it blocks if ch is not closed.
func drain(ch <-chan Event) int {
	n := 0
	for range ch {
		n++
	}
	return n
}
