package envoysim

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// procStream is one NetworkExternalProcessor.Process stream (Envoy's
// ProcessorStreamImpl). Sending never blocks the dispatcher: requests are
// queued for a sender goroutine. Received messages and the remote close are
// posted to the connection's dispatcher, and dropped there once the filter
// closed the stream, as Envoy delivers no callback after close().
type procStream struct {
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	queue   []*netextprocv3.ProcessingRequest
	closing bool
	wake    chan struct{}
}

type procCallbacks struct {
	d         *dispatcher
	onMessage func(*procStream, *netextprocv3.ProcessingResponse)
	onClose   func(*procStream, codes.Code, string)
}

// startProcStream opens the stream. A nil return with an error is Envoy's
// "client_->start() returned null" (stream_open_failures). Failures after that
// (unreachable processor) arrive as a gRPC error, as in Envoy.
func (s *Sim) startProcStream(t *grpcTarget, cb procCallbacks) (*procStream, error) {
	cc, err := s.grpcConn(t)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(context.Background(), t.md.Copy()))
	ps := &procStream{ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1)}
	client := netextprocv3.NewNetworkExternalProcessorClient(cc)
	go ps.run(client, cb)
	return ps, nil
}

func (ps *procStream) send(req *netextprocv3.ProcessingRequest) {
	ps.mu.Lock()
	ps.queue = append(ps.queue, req)
	ps.mu.Unlock()
	ps.signal()
}

func (ps *procStream) signal() {
	select {
	case ps.wake <- struct{}{}:
	default:
	}
}

// close half-closes the stream, then resets it (closeStream() then
// resetStream() in ProcessorStreamImpl::close). Unsent requests are dropped.
func (ps *procStream) close() {
	ps.mu.Lock()
	ps.closing = true
	ps.queue = nil
	ps.mu.Unlock()
	ps.signal()
	// The reset must not wait for a sender blocked on flow control.
	time.AfterFunc(time.Second, ps.cancel)
}

func (ps *procStream) run(client netextprocv3.NetworkExternalProcessorClient, cb procCallbacks) {
	defer ps.cancel()
	stream, err := client.Process(ps.ctx)
	if err != nil {
		cb.d.post(func() { cb.onClose(ps, status.Code(err), err.Error()) })
		return
	}
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				code, msg := codes.OK, ""
				if !errors.Is(err, io.EOF) {
					st := status.Convert(err)
					code, msg = st.Code(), st.Message()
				}
				cb.d.post(func() { cb.onClose(ps, code, msg) })
				return
			}
			cb.d.post(func() { cb.onMessage(ps, resp) })
		}
	}()
	for {
		ps.mu.Lock()
		batch, closing := ps.queue, ps.closing
		ps.queue = nil
		ps.mu.Unlock()
		for _, req := range batch {
			if err := stream.Send(req); err != nil {
				// The receive side reports the stream's status.
				<-ps.ctx.Done()
				return
			}
		}
		if closing {
			_ = stream.CloseSend()
			return // deferred cancel resets the stream
		}
		if len(batch) == 0 {
			select {
			case <-ps.wake:
			case <-ps.ctx.Done():
				return
			}
		}
	}
}
