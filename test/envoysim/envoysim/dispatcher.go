package envoysim

import (
	"sync"
	"time"
)

// dispatcher runs every callback of one downstream connection on one goroutine:
// socket events, its upstream connection, its gRPC side streams, its timers. Envoy
// runs a connection on one worker thread the same way, so filter code holds no
// locks and sees events in the order they were posted.
//
// Owner: the goroutine started by run owns everything reachable from the
// connection. Other goroutines only call post.
type dispatcher struct {
	mu      sync.Mutex
	queue   []func()
	wake    chan struct{}
	exited  bool
	stopped bool // set on the loop goroutine: leave after the current batch
}

func newDispatcher() *dispatcher {
	return &dispatcher{wake: make(chan struct{}, 1)}
}

// post queues fn to run on the loop. It reports false, and drops fn, once the
// loop has exited: late events of a closed connection are discarded the way
// Envoy's deferred deletion discards callbacks of a destroyed connection.
func (d *dispatcher) post(fn func()) bool {
	d.mu.Lock()
	if d.exited {
		d.mu.Unlock()
		return false
	}
	d.queue = append(d.queue, fn)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
	return true
}

// run executes posted functions until stop is called from one of them.
func (d *dispatcher) run() {
	for {
		<-d.wake
		for {
			d.mu.Lock()
			batch := d.queue
			d.queue = nil
			if len(batch) == 0 || d.stopped {
				if d.stopped {
					d.exited = true
					d.queue = nil
				}
				d.mu.Unlock()
				break
			}
			d.mu.Unlock()
			for _, fn := range batch {
				fn()
			}
		}
		d.mu.Lock()
		done := d.exited
		d.mu.Unlock()
		if done {
			return
		}
	}
}

// stop makes the loop exit after the function that called it. Call it on the loop.
func (d *dispatcher) stop() {
	d.mu.Lock()
	d.stopped = true
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// timer is Envoy's Event::Timer: enable (re)arms it, disable cancels it, and the
// callback runs on the dispatcher. A firing that raced with disable is ignored
// because the generation it captured is stale.
type timer struct {
	d     *dispatcher
	fn    func()
	t     *time.Timer
	gen   uint64
	armed bool
}

func (d *dispatcher) newTimer(fn func()) *timer { return &timer{d: d, fn: fn} }

func (t *timer) enable(dur time.Duration) {
	t.disable()
	t.armed = true
	gen := t.gen
	t.t = time.AfterFunc(dur, func() {
		t.d.post(func() {
			if t.armed && t.gen == gen {
				t.armed = false
				t.fn()
			}
		})
	})
}

func (t *timer) disable() {
	if t.t != nil {
		t.t.Stop()
		t.t = nil
	}
	t.armed = false
	t.gen++
}

func (t *timer) enabled() bool { return t.armed }
