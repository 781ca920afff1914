package envoysim

import "time"

// The write path and the close types of Envoy's ConnectionImpl. Only a
// FlushWrite local close and a remote close go through the filter manager,
// and only with the runtime flag on (contract §0.1); NoFlush and AbortReset
// never wait for filters.

// write sends data through the write filter chain (Connection::write).
func (c *conn) write(data []byte, endStream bool) {
	if c.state != stateOpen || c.writeEndStream {
		return
	}
	b := newBuffer(data)
	if c.fm != nil {
		c.curWrite, c.curWriteEndStream = b, endStream
		st := c.fm.onWrite(nil, connWriteSource{c})
		c.curWrite = nil
		if st == stopIteration {
			return
		}
	}
	c.rawWrite(b, endStream)
}

// rawWrite queues bytes for the socket, bypassing the write filters.
func (c *conn) rawWrite(b *buffer, endStream bool) {
	if c.state == stateClosed || c.writeEndStream {
		return
	}
	if endStream && !c.halfClose {
		// Without half-close Envoy never shuts down the write side alone.
		endStream = false
	}
	if b.Len() > 0 {
		c.unflushed++
		c.enqueueWrite(writeOp{data: b.take(), to: c.transport})
	}
	if endStream {
		c.writeEndStream = true
		c.unflushed++
		c.enqueueWrite(writeOp{shutdownWrite: true, to: c.transport})
	}
}

// enqueueWrite hands op to the writer, or holds it while a read is being
// called back (interruptRead).
func (c *conn) enqueueWrite(op writeOp) {
	if c.readInterrupted {
		c.heldWrites = append(c.heldWrites, op)
		return
	}
	c.w.enqueue(op)
}

func (c *conn) onWriteProgress(n int, err error) {
	if c.state == stateClosed {
		return
	}
	c.unflushed--
	if err != nil {
		c.sim.logf("conn %d: write: %v", c.id, err)
		c.closeSocket(evRemoteClose)
		return
	}
	if n > 0 && len(c.bytesSentCallbacks) > 0 {
		keep := c.bytesSentCallbacks[:0]
		for _, cb := range c.bytesSentCallbacks {
			if cb(n) {
				keep = append(keep, cb)
			}
		}
		c.bytesSentCallbacks = keep
		if c.state == stateClosed {
			return
		}
		c.giveReadToken()
	}
	if c.unflushed == 0 && (c.closeAfterFlush || c.bothSidesHalfClosed()) {
		c.closeSocket(evLocalClose)
	}
}

func (c *conn) bothSidesHalfClosed() bool {
	return c.readEndStream && c.writeEndStream && c.unflushed == 0
}

// close is Connection::close.
func (c *conn) close(t closeType, details string) {
	if c.state == stateClosed {
		return
	}
	if c.closeDetails == "" {
		c.closeDetails = details
	}
	switch t {
	case closeAbortReset:
		if tc := tcpConnOf(c.raw); tc != nil {
			_ = tc.SetLinger(0)
		}
		c.abort = true
		c.closeSocket(evLocalClose)
	case closeNoFlush:
		c.closeInternal(closeNoFlush)
	default:
		c.closeThroughFilterManager(closeAction{event: evLocalClose, closeType: closeFlushWrite})
	}
}

// remoteClose handles end of stream without half-close, read errors, and both
// directions half-closed.
func (c *conn) remoteClose() {
	c.closeThroughFilterManager(closeAction{event: evRemoteClose, closeSocket: true})
}

func (c *conn) closeThroughFilterManager(a closeAction) {
	if c.fm != nil && c.sim.opts.closeThroughFilterManager {
		c.fm.onConnectionClose(a)
		return
	}
	c.closeConnection(a)
}

// closeConnection performs a close the filter manager let through.
func (c *conn) closeConnection(a closeAction) {
	if a.closeSocket {
		c.closeSocket(a.event)
		return
	}
	c.closeInternal(a.closeType)
}

func (c *conn) closeInternal(t closeType) {
	if c.state == stateClosed {
		return
	}
	if c.unflushed == 0 || t == closeNoFlush {
		// NoFlush still makes one best-effort attempt at what is queued.
		c.closeSocket(evLocalClose)
		return
	}
	c.state = stateClosing
	c.closeAfterFlush = true
	// The writer closes the socket itself once flushed, so an upstream whose
	// downstream (and dispatcher) is gone is still closed.
	c.w.closeAfterQueued(flushTimeout)
}

// closeSocket closes the socket and raises the close event.
func (c *conn) closeSocket(ev connEvent) {
	if c.state == stateClosed {
		return
	}
	c.sim.logf("conn %d (upstream=%v): closing socket: %s %s", c.id, c.upstream, ev, c.closeDetails)
	c.state = stateClosed
	close(c.readToken)
	if c.abort {
		c.w.closeNow()
	} else {
		c.w.closeAfterQueued(50 * time.Millisecond)
	}
	for _, cb := range c.callbacks {
		cb(ev)
	}
	if c.fm != nil {
		c.fm.destroy()
	}
	if c.onClosed != nil {
		c.onClosed()
	}
}
