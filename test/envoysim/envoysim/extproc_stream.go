package envoysim

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// procStream is one bidirectional ext_proc stream (Envoy's
// ProcessorStreamImpl), for the network filter (NetworkExternalProcessor) and
// the HTTP filter (ExternalProcessor) alike. Sending never blocks the
// dispatcher: requests are queued for a sender goroutine. Received messages
// and the remote close are posted to the connection's or stream's dispatcher,
// and dropped there once the filter closed the stream, as Envoy delivers no
// callback after close().
type procStream[Req, Resp any] struct {
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	queue   []Req
	closing bool
	wake    chan struct{}
}

// netProcStream is the network ext_proc filter's stream.
type netProcStream = procStream[*netextprocv3.ProcessingRequest, *netextprocv3.ProcessingResponse]

// bidiStream is the client side of a generated bidirectional-streaming method.
type bidiStream[Req, Resp any] interface {
	Send(Req) error
	Recv() (Resp, error)
	CloseSend() error
}

// openStream opens the method on a channel.
type openStream[Req, Resp any] func(ctx context.Context, cc *grpc.ClientConn) (bidiStream[Req, Resp], error)

func openNetProcess(ctx context.Context, cc *grpc.ClientConn) (bidiStream[*netextprocv3.ProcessingRequest, *netextprocv3.ProcessingResponse], error) {
	return netextprocv3.NewNetworkExternalProcessorClient(cc).Process(ctx)
}

type procCallbacks[Req, Resp any] struct {
	d         *dispatcher
	onMessage func(*procStream[Req, Resp], Resp)
	onClose   func(*procStream[Req, Resp], codes.Code, string)
}

// startProcStream opens the stream. A nil return with an error is Envoy's
// "client_->start() returned null" (stream_open_failures). Failures after that
// (unreachable processor) arrive as a gRPC error, as in Envoy.
func startProcStream[Req, Resp any](s *Sim, t *grpcTarget, open openStream[Req, Resp], cb procCallbacks[Req, Resp]) (*procStream[Req, Resp], error) {
	cc, err := s.grpcConn(t)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(context.Background(), t.md.Copy()))
	ps := &procStream[Req, Resp]{ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1)}
	go ps.run(cc, open, cb)
	return ps, nil
}

func (ps *procStream[Req, Resp]) send(req Req) {
	ps.mu.Lock()
	ps.queue = append(ps.queue, req)
	ps.mu.Unlock()
	ps.signal()
}

func (ps *procStream[Req, Resp]) signal() {
	select {
	case ps.wake <- struct{}{}:
	default:
	}
}

// close half-closes the stream, then resets it (closeStream() then
// resetStream() in ProcessorStreamImpl::close). Unsent requests are dropped.
func (ps *procStream[Req, Resp]) close() {
	ps.mu.Lock()
	ps.closing = true
	ps.queue = nil
	ps.mu.Unlock()
	ps.signal()
	// The reset must not wait for a sender blocked on flow control.
	time.AfterFunc(time.Second, ps.cancel)
}

func (ps *procStream[Req, Resp]) run(cc *grpc.ClientConn, open openStream[Req, Resp], cb procCallbacks[Req, Resp]) {
	defer ps.cancel()
	stream, err := open(ps.ctx, cc)
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
