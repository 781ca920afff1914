package envoysim

// This file is the iteration half of Envoy's Http::FilterManager
// (source/common/http/filter_manager.cc), reduced to headers and data (the
// sim NACKs trailer modes and nothing it accepts produces metadata frames):
//
//   - decoder filters run in config order, encoder filters in reverse;
//   - headers: Continue goes on; StopIteration stops the headers here while data
//     still reaches this filter; StopAllIteration also holds the data, which is
//     buffered and offered to this same filter when it continues;
//   - data: Continue goes on (or, after a StopIteration on headers, continues the
//     headers first); StopIterationAndBuffer buffers in the stream's buffer;
//     StopIterationNoBuffer drops nothing but passes nothing on: the filter owns
//     the bytes and injects them later;
//   - continue (commonContinue): the headers go on from the next filter, with
//     end_stream only if the message is complete and nothing is buffered, then
//     the buffered data, from this filter after a StopAll or else the next one;
//   - injected data resumes at the next filter;
//   - a data frame after a filter saw end_stream is not offered to it again.
//
// Local replies (stream.go) stop the decoder chain and encode through every
// encoder filter, as sendLocalReplyViaFilterChain does.

type headersStatus int

const (
	headersContinue headersStatus = iota
	headersStopIteration
	// headersStopAll is StopAllIterationAndBuffer / StopAllIterationAndWatermark
	// (the sim has no watermarks).
	headersStopAll
)

type dataStatus int

const (
	dataContinue dataStatus = iota
	// dataStopAndBuffer is StopIterationAndBuffer / StopIterationAndWatermark.
	dataStopAndBuffer
	dataStopNoBuffer
)

// decoderFilter is Http::StreamDecoderFilter.
type decoderFilter interface {
	decodeHeaders(h *headerMap, endStream bool) headersStatus
	decodeData(b *buffer, endStream bool) dataStatus
}

// encoderFilter is Http::StreamEncoderFilter.
type encoderFilter interface {
	encodeHeaders(h *headerMap, endStream bool) headersStatus
	encodeData(b *buffer, endStream bool) dataStatus
}

type iterState int

const (
	iterContinue iterState = iota
	iterStopSingle
	iterStopAll
)

// activeFilter is ActiveStreamDecoderFilter / ActiveStreamEncoderFilter.
type activeFilter struct {
	headers          func(*headerMap, bool) headersStatus
	data             func(*buffer, bool) dataStatus
	state            iterState
	headersContinued bool
	endStream        bool // end_stream_: this filter has seen the end of the message
}

// filterDir is one direction of a stream's filter chain.
type filterDir struct {
	s        *httpStream
	filters  []*activeFilter
	hdrs     *headerMap
	buffered *buffer // the stream's buffered body; nil when none (Envoy tells nil from empty)
	complete bool    // the source sent end_stream (complete() in Envoy)
	aborted  bool    // a local reply or a reset ended this direction's iteration
	// sinkHeaders and sinkData receive what passes the last filter.
	sinkHeaders func(*headerMap, bool)
	sinkData    func(*buffer, bool)
}

// filterHandle is what a filter gets as its decoder or encoder callbacks.
type filterHandle struct {
	dir *filterDir
	idx int
}

func (d *filterDir) handle(f *activeFilter) *filterHandle {
	for i, a := range d.filters {
		if a == f {
			return &filterHandle{dir: d, idx: i}
		}
	}
	panic("envoysim: filter not in its chain")
}

// continueIteration is continueDecoding / continueEncoding.
func (h *filterHandle) continueIteration() { h.dir.continueFrom(h.idx) }

// injectData is inject{De,En}codedDataToFilterChain.
func (h *filterHandle) injectData(p []byte, endStream bool) {
	h.dir.iterateData(h.idx+1, newBuffer(p), endStream)
}

// bufferedData is decodingBuffer / encodingBuffer (nil when none).
func (h *filterHandle) bufferedData() *buffer { return h.dir.buffered }

// addBufferedData is add{De,En}codedData outside a callback: it appends to the
// stream's buffer, creating it.
func (h *filterHandle) addBufferedData(p []byte) { h.dir.bufferData(newBuffer(p)) }

// headers is the message's headers (request or response).
func (h *filterHandle) headers() *headerMap { return h.dir.hdrs }

func (d *filterDir) bufferData(b *buffer) {
	if d.buffered == nil {
		d.buffered = &buffer{}
	}
	if b != d.buffered {
		d.buffered.add(b.take())
	}
}

func (d *filterDir) stopped() bool { return d.aborted || d.s.done }

// onHeaders starts the direction with its headers.
func (d *filterDir) onHeaders(h *headerMap, endStream bool) {
	d.hdrs = h
	d.complete = endStream
	d.iterateHeaders(0, endStream)
}

// onData offers a frame from the source (downstream or upstream).
func (d *filterDir) onData(b *buffer, endStream bool) {
	if d.stopped() {
		return
	}
	d.complete = d.complete || endStream
	d.iterateData(0, b, endStream)
}

func (d *filterDir) iterateHeaders(from int, endStream bool) {
	for _, a := range d.filters[from:] {
		a.endStream = endStream
		st := a.headers(d.hdrs, endStream)
		if d.stopped() {
			return
		}
		switch st {
		case headersStopIteration:
			a.state = iterStopSingle
			return
		case headersStopAll:
			a.state = iterStopAll
			return
		}
		a.headersContinued = true
	}
	d.sinkHeaders(d.hdrs, endStream)
}

func (d *filterDir) iterateData(from int, b *buffer, endStream bool) {
	if d.stopped() {
		return
	}
	for i := from; i < len(d.filters); i++ {
		a := d.filters[i]
		if a.state == iterStopAll {
			d.bufferData(b) // handleDataIfStopAll
			return
		}
		if a.endStream {
			return
		}
		a.endStream = endStream
		st := a.data(b, endStream)
		if d.stopped() {
			return
		}
		switch st {
		case dataContinue:
			if a.state == iterStopSingle {
				d.bufferData(b)
				d.continueFrom(i)
				return
			}
			continue
		case dataStopAndBuffer:
			d.bufferData(b)
		case dataStopNoBuffer:
			if d.complete && d.buffered == nil && endStream {
				// A zero-byte end_stream frame the filter kept: an empty buffer
				// makes the continue deliver end_stream (commonHandleAfterDataCallback).
				d.buffered = &buffer{}
			}
		}
		a.state = iterStopSingle
		return
	}
	d.sinkData(b, endStream)
}

// continueFrom is ActiveStreamFilterBase::commonContinue for filter i.
func (d *filterDir) continueFrom(i int) {
	if d.stopped() {
		return
	}
	a := d.filters[i]
	if a.state == iterContinue {
		return
	}
	fromCurrent := a.state == iterStopAll
	a.state = iterContinue
	if !a.headersContinued {
		a.headersContinued = true
		d.iterateHeaders(i+1, d.complete && d.buffered == nil)
		if d.stopped() {
			return
		}
	}
	if d.buffered != nil {
		b := d.buffered
		d.buffered = nil
		from := i + 1
		if fromCurrent {
			from = i
		}
		d.iterateData(from, b, d.complete)
	}
}
