package server

import (
	"context"
	"testing"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/tap"

	"github.com/halt-envoy/halt-envoy/internal/metrics"
)

// benchKey stands for the values grpc-go puts in a call's context.
type benchKey struct{}

// BenchmarkTap is the in-flight admission of one gRPC call as it runs: taken at its
// headers (tap), given back when its handler returns (bound), against the stream
// context's own cost as the baseline:
// go test -bench 'Tap|StreamContext' -benchmem ./internal/server/
func BenchmarkTap(b *testing.B) {
	s := &Server{opt: Options{MaxInFlight: 1 << 30, Metrics: metrics.New(nil)}}
	info := &tap.Info{FullMethodName: "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if n++; n%10_000 == 0 { // the server sweeps every 0.1 s: ~10,000 calls at 100k/s
			s.places.sweep()
		}
		ctx, cancel := context.WithCancel(context.Background())
		tctx, err := s.tap(ctx, info)
		if err != nil {
			b.Fatal(err)
		}
		s.bound(context.WithValue(tctx, benchKey{}, 1), nil, nil, handler)
		cancel()
	}
	s.places.sweep()
	if n := s.inflight.Load(); n != 0 {
		b.Fatalf("%d places not given back", n)
	}
}

// BenchmarkStreamContext is what grpc-go does for every stream anyway: the baseline of
// BenchmarkTap.
func BenchmarkStreamContext(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithCancel(context.Background())
		_ = context.WithValue(ctx, benchKey{}, 1)
		cancel()
	}
}

// BenchmarkWatcherFeed follows one call's client frames (HEADERS and DATA, as Envoy
// sends them), per call.
func BenchmarkWatcherFeed(b *testing.B) {
	block := headerBlock()
	w := newH2Watcher(newClock().now)
	w.feed([]byte(http2.ClientPreface))
	id := uint32(1)
	call := func() []byte {
		return frames(func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
			fr.WriteData(id, true, make([]byte, 80))
		})
	}
	buf := call()
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		// Same bytes, a new stream id each time (the watcher reads only headers).
		buf[5], buf[6], buf[7], buf[8] = byte(id>>24), byte(id>>16), byte(id>>8), byte(id)
		d := 9 + len(block)
		buf[d+5], buf[d+6], buf[d+7], buf[d+8] = byte(id>>24), byte(id>>16), byte(id>>8), byte(id)
		w.feed(buf)
		id += 2
	}
}
