package envoysim

// This file is Envoy's Network::FilterManagerImpl (source/common/network/
// filter_manager_impl.cc), the mechanics of contract §0.1:
//
//   - addReadFilter appends, so read filters run in config order;
//   - addWriteFilter prepends, so write filters run in reverse config order;
//   - a read filter that was skipped because an earlier one stopped iteration
//     gets onNewConnection just before its first onData;
//   - injected data resumes iteration at the filter after the injecting one and,
//     for writes, ends in rawWrite;
//   - disableClose(true) makes a filter gate the close; the close is latched and
//     performed once no filter gates it. Only FlushWrite local closes and remote
//     closes are gated, and only when the runtime flag
//     envoy.reloadable_features.connection_close_through_filter_manager is on
//     (Options.CloseThroughFilterManager; Envoy's default is off).

type filterStatus int

const (
	continueIteration filterStatus = iota
	stopIteration
)

func (s filterStatus) String() string {
	if s == stopIteration {
		return "StopIteration"
	}
	return "Continue"
}

// readFilter is Envoy's Network::ReadFilter.
type readFilter interface {
	initializeReadFilterCallbacks(cb *activeReadFilter)
	onNewConnection() filterStatus
	onData(data *buffer, endStream bool) filterStatus
}

// writeFilter is Envoy's Network::WriteFilter.
type writeFilter interface {
	initializeWriteFilterCallbacks(cb *activeWriteFilter)
	onWrite(data *buffer, endStream bool) filterStatus
}

// destroyer is implemented by filters that must clean up when the connection
// is destroyed (Envoy runs the filter destructors).
type destroyer interface{ onDestroy() }

// activeReadFilter is Envoy's ActiveReadFilter: the ReadFilterCallbacks one
// filter gets.
type activeReadFilter struct {
	fm           *filterManager
	f            readFilter
	index        int
	initialized  bool
	pendingClose bool
}

func (a *activeReadFilter) connection() *conn { return a.fm.c }

// continueReading resumes iteration at the next filter with the connection's
// read buffer (what ext_authz does after an asynchronous OK).
func (a *activeReadFilter) continueReading() {
	a.fm.onContinueReading(a, connReadSource{a.fm.c})
}

// injectReadDataToFilterChain offers data to the filters after this one.
func (a *activeReadFilter) injectReadDataToFilterChain(data []byte, endStream bool) {
	a.fm.onContinueReading(a, &injectedSource{buf: newBuffer(data), endStream: endStream})
}

func (a *activeReadFilter) disableClose(disable bool) {
	a.fm.disableClose(&a.pendingClose, disable)
}

// activeWriteFilter is Envoy's ActiveWriteFilter.
type activeWriteFilter struct {
	fm           *filterManager
	f            writeFilter
	index        int
	pendingClose bool
}

func (a *activeWriteFilter) connection() *conn { return a.fm.c }

// injectWriteDataToFilterChain offers data to the write filters after this one
// and then writes it to the socket (onResumeWriting → rawWrite).
func (a *activeWriteFilter) injectWriteDataToFilterChain(data []byte, endStream bool) {
	src := &injectedSource{buf: newBuffer(data), endStream: endStream}
	if a.fm.onWrite(a, src) == continueIteration {
		a.fm.c.rawWrite(src.buf, src.endStream)
	}
}

func (a *activeWriteFilter) disableClose(disable bool) {
	a.fm.disableClose(&a.pendingClose, disable)
}

// bufferSource yields the buffer iteration offers to each filter.
type bufferSource interface {
	buffer() (*buffer, bool)
}

type connReadSource struct{ c *conn }

func (s connReadSource) buffer() (*buffer, bool) { return &s.c.readBuf, s.c.readEndStream }

type connWriteSource struct{ c *conn }

func (s connWriteSource) buffer() (*buffer, bool) { return s.c.curWrite, s.c.curWriteEndStream }

type injectedSource struct {
	buf       *buffer
	endStream bool
}

func (s *injectedSource) buffer() (*buffer, bool) { return s.buf, s.endStream }

// closeAction is Envoy's ConnectionCloseAction.
type closeAction struct {
	event       connEvent // evLocalClose or evRemoteClose
	closeSocket bool
	closeType   closeType
}

type filterManager struct {
	c            *conn
	readFilters  []*activeReadFilter
	writeFilters []*activeWriteFilter // already in iteration (reverse config) order
	destroyers   []destroyer

	// Close gating state (FilterManagerImpl::State).
	pendingCloseCount  int
	latched            *closeAction
	localClosePending  bool
	remoteClosePending bool
}

func newFilterManager(c *conn) *filterManager { return &filterManager{c: c} }

func (fm *filterManager) addReadFilter(f readFilter) {
	a := &activeReadFilter{fm: fm, f: f, index: len(fm.readFilters)}
	f.initializeReadFilterCallbacks(a)
	fm.readFilters = append(fm.readFilters, a)
	fm.addDestroyer(f)
}

func (fm *filterManager) addWriteFilter(f writeFilter) {
	a := &activeWriteFilter{fm: fm, f: f}
	f.initializeWriteFilterCallbacks(a)
	// LinkedList::moveIntoList places the new filter at the front.
	fm.writeFilters = append([]*activeWriteFilter{a}, fm.writeFilters...)
	for i, w := range fm.writeFilters {
		w.index = i
	}
	fm.addDestroyer(f)
}

// addFilter adds a read+write filter, as FilterManagerImpl::addFilter does.
func (fm *filterManager) addFilter(f interface {
	readFilter
	writeFilter
}) {
	fm.addReadFilter(f)
	fm.addWriteFilter(f)
}

func (fm *filterManager) addDestroyer(f any) {
	d, ok := f.(destroyer)
	if !ok {
		return
	}
	for _, have := range fm.destroyers {
		if have == d {
			return
		}
	}
	fm.destroyers = append(fm.destroyers, d)
}

// initializeReadFilters calls onNewConnection in order and stops at the first
// StopIteration; it does not call onData.
func (fm *filterManager) initializeReadFilters() {
	for _, a := range fm.readFilters {
		if a.initialized {
			continue
		}
		a.initialized = true
		if a.f.onNewConnection() == stopIteration || fm.c.state != stateOpen {
			return
		}
	}
}

// onRead runs the read chain from the first filter over the connection buffer.
func (fm *filterManager) onRead() { fm.onContinueReading(nil, connReadSource{fm.c}) }

// onContinueReading iterates the read filters after from (all of them when from
// is nil) over src.
func (fm *filterManager) onContinueReading(from *activeReadFilter, src bufferSource) {
	if fm.c.state != stateOpen {
		return
	}
	start := 0
	if from != nil {
		start = from.index + 1
	}
	for _, a := range fm.readFilters[start:] {
		if !a.initialized {
			a.initialized = true
			if a.f.onNewConnection() == stopIteration || fm.c.state != stateOpen {
				return
			}
		}
		buf, end := src.buffer()
		if buf.Len() > 0 || end {
			if a.f.onData(buf, end) == stopIteration || fm.c.state != stateOpen {
				return
			}
		}
	}
}

// onWrite iterates the write filters after from over src. Only injected writes
// pass while a local close is pending; nothing passes while a remote close is.
func (fm *filterManager) onWrite(from *activeWriteFilter, src bufferSource) filterStatus {
	if fm.c.state != stateOpen {
		return stopIteration
	}
	if from != nil && fm.remoteClosePending || from == nil && fm.pendingClose() {
		return stopIteration
	}
	start := 0
	if from != nil {
		start = from.index + 1
	}
	for _, a := range fm.writeFilters[start:] {
		buf, end := src.buffer()
		if a.f.onWrite(buf, end) == stopIteration || fm.c.state != stateOpen {
			return stopIteration
		}
	}
	return continueIteration
}

func (fm *filterManager) pendingClose() bool { return fm.localClosePending || fm.remoteClosePending }

// disableClose is ActiveRead/WriteFilter::disableClose: one flag per filter, so
// repeated disableClose(true) counts once and one disableClose(false) clears it.
func (fm *filterManager) disableClose(flag *bool, disable bool) {
	if disable {
		if !*flag {
			*flag = true
			fm.pendingCloseCount++
		}
		return
	}
	if *flag {
		*flag = false
		fm.pendingCloseCount--
	}
	if fm.pendingCloseCount == 0 {
		fm.maybeClose()
	}
}

// onConnectionClose latches a close while filters gate it (runtime flag on).
func (fm *filterManager) onConnectionClose(a closeAction) {
	if fm.c.state == stateClosed {
		return
	}
	if fm.latched != nil && fm.latched.closeSocket {
		if fm.latched.event == evLocalClose || !a.closeSocket {
			return
		}
	}
	if fm.pendingCloseCount == 0 {
		fm.localClosePending, fm.remoteClosePending = false, false
		fm.c.closeConnection(a)
		return
	}
	fm.latched = &a
	fm.c.sim.stats.counter("envoysim.delayed_closes").Add(1)
	fm.localClosePending = a.event == evLocalClose
	fm.remoteClosePending = a.event == evRemoteClose
	fm.c.sim.logf("conn %d: close delayed, %d filter(s) gate it", fm.c.id, fm.pendingCloseCount)
}

func (fm *filterManager) maybeClose() {
	if fm.c.state == stateClosed {
		return
	}
	if fm.pendingClose() && fm.pendingCloseCount == 0 && fm.latched != nil {
		a := *fm.latched
		fm.localClosePending, fm.remoteClosePending = false, false
		fm.c.closeConnection(a)
	}
}

// destroy runs the filters' destructors after the connection closed.
func (fm *filterManager) destroy() {
	for _, d := range fm.destroyers {
		d.onDestroy()
	}
}
