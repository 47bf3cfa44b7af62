package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/internal/tlsutil/tlstest"
)

// clock is a settable clock for the watcher and the cooldowns.
type clock struct{ t atomic.Int64 }

func (c *clock) now() time.Time      { return time.Unix(0, c.t.Load()) }
func (c *clock) add(d time.Duration) { c.t.Add(int64(d)) }
func newClock() *clock               { c := &clock{}; c.t.Store(time.Unix(1_700_000_000, 0).UnixNano()); return c }
func frames(write func(*http2.Framer)) []byte {
	var b bytes.Buffer
	write(http2.NewFramer(&b, nil))
	return b.Bytes()
}

// headerBlock is an HPACK-encoded gRPC request's headers.
func headerBlock() []byte {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"},
		{":authority", "x"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return hb.Bytes()
}

// TestH2Watcher: the watcher follows frames however the bytes are split, counts only
// streams reset before their request (a reset after DATA, or after HEADERS that end the
// stream, is fair), and tips past RapidResetsPerSecond of them within one second.
func TestH2Watcher(t *testing.T) {
	block := headerBlock()
	rapid := func(id uint32) []byte {
		return frames(func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
			fr.WriteRSTStream(id, http2.ErrCodeCancel)
		})
	}
	fair := func(id uint32) []byte {
		return frames(func(fr *http2.Framer) {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true})
			fr.WriteData(id, true, []byte{0, 0, 0, 0, 1, 0})
			fr.WriteRSTStream(id, http2.ErrCodeCancel) // a call given up on: fair
		})
	}
	preface := append([]byte(http2.ClientPreface), frames(func(fr *http2.Framer) { fr.WriteSettings(); fr.WritePing(false, [8]byte{}) })...)

	for _, chunk := range []int{1, 7, 9, 4096} {
		c := newClock()
		w := newH2Watcher(c.now)
		feed := func(b []byte) int {
			for i := 0; i < len(b); i += chunk {
				end := min(i+chunk, len(b))
				if at := w.feed(b[i:end]); at >= 0 {
					return i + at
				}
			}
			return -1
		}
		if feed(preface) >= 0 {
			t.Fatalf("chunk %d: the preface tipped", chunk)
		}
		id := uint32(1)
		for i := 0; i < 1000; i++ {
			if at := feed(fair(id)); at >= 0 {
				t.Fatalf("chunk %d: fair resets tipped at stream %d", chunk, id)
			}
			id += 2
		}
		for i := 0; i < RapidResetsPerSecond; i++ {
			if at := feed(rapid(id)); at >= 0 {
				t.Fatalf("chunk %d: tipped after %d rapid resets, want %d", chunk, i+1, RapidResetsPerSecond+1)
			}
			id += 2
		}
		c.add(time.Second) // a new window: the count starts over
		for i := 0; i < RapidResetsPerSecond; i++ {
			if at := feed(rapid(id)); at >= 0 {
				t.Fatalf("chunk %d: the window did not start over", chunk)
			}
			id += 2
		}
		b := rapid(id)
		at := feed(b)
		if at != len(b) {
			t.Fatalf("chunk %d: tipping frame ends at %d, want %d (the end of its RST_STREAM)", chunk, at, len(b))
		}
	}
}

func TestCooldowns(t *testing.T) {
	c := newClock()
	cd := newCooldowns(c.now)
	ip := netip.MustParseAddr("192.0.2.1")
	if cd.blocked(ip) {
		t.Fatal("blocked before any offence")
	}
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		if d := cd.offend(ip); d != want {
			t.Fatalf("offence %d: cooldown %v, want %v", i+1, d, want)
		}
	}
	if !cd.blocked(ip) || cd.blocked(netip.MustParseAddr("192.0.2.2")) {
		t.Fatal("cooldown not per address")
	}
	c.add(4 * time.Second)
	if cd.blocked(ip) {
		t.Fatal("still blocked after the cooldown")
	}
	for i := 0; i < 10; i++ {
		cd.offend(ip)
	}
	if d := cd.offend(ip); d != MaxCooldown {
		t.Fatalf("cooldown %v, want the cap %v", d, MaxCooldown)
	}
	c.add(MaxCooldown + forgetCooldown + time.Second)
	if d := cd.offend(ip); d != FirstCooldown {
		t.Fatalf("after a quiet spell: %v, want %v", d, FirstCooldown)
	}
	for i := 0; i < maxCooldowns+10; i++ {
		cd.offend(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	if len(cd.m) > maxCooldowns {
		t.Fatalf("%d addresses remembered, bound %d", len(cd.m), maxCooldowns)
	}
}

// TestCappedListener: past the cap Accept waits until a connection closes.
func TestCappedListener(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMetricsForTest()
	l := newCappedListener(raw, 2, nil, m.Connections.WithLabelValues("test"))
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var clients []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	first, second := <-accepted, <-accepted
	select {
	case <-accepted:
		t.Fatal("a third connection accepted past the cap of 2")
	case <-time.After(100 * time.Millisecond):
	}
	first.Close()
	first.Close() // once only
	third := <-accepted
	third.Close()
	second.Close()
	_ = clients
}

// TestRapidResetTLS: over TLS (the watcher follows the frames after the handshake) a
// rapid-reset connection is told GOAWAY ENHANCE_YOUR_CALM and closed, counted, while a
// normal client's connection keeps working; a new connection from the same address is
// refused in cooldown.
func TestRapidResetTLS(t *testing.T) {
	ca, err := tlstest.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue("localhost", false, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	var cur atomic.Pointer[config.Set]
	cur.Store(set(t, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true}\n"))
	c := newClock() // frozen: the cooldown lasts as long as the test
	s := newServer(t, &cur, Options{Now: c.now, TLS: &tls.Config{Certificates: []tls.Certificate{pair.TLS()}, NextProtos: []string{"h2"}}})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	defer func() { cancel(); <-served }()

	client := &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", NextProtos: []string{"h2"}}
	cc, err := grpc.NewClient(s.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(client)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	rls := rlspb.NewRateLimitServiceClient(cc)
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := rls.ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "d", Descriptors: []*rlcommon.RateLimitDescriptor{{
			Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "k", Value: "v"}}}}})
		return err
	}
	if err := call(); err != nil {
		t.Fatal(err)
	}

	conn, err := tls.Dial("tcp", s.GRPCAddr().String(), client)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(conn, conn)
	fr.WriteSettings()
	go func() { // write until the server stops reading
		block := headerBlock()
		for id := uint32(1); id < 1<<20; id += 2 {
			if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}) != nil ||
				fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
				return
			}
		}
	}()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var goaway *http2.GoAwayFrame
	rf := http2.NewFramer(io.Discard, conn)
	for goaway == nil {
		f, err := rf.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY before the connection ended: %v", err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			goaway = g
		}
	}
	if goaway.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", goaway.ErrCode)
	}
	for {
		if _, err := rf.ReadFrame(); err != nil {
			break // closed
		}
	}
	if err := call(); err != nil {
		t.Fatalf("the normal client's connection after the attack: %v", err)
	}
	if got := counterValue(s.opt.Metrics.ConnectionsRefused.WithLabelValues("grpc", "rapid_reset")); got != 1 {
		t.Fatalf("rapid_reset connections counted %v, want 1", got)
	}
	// A new connection from the same address is closed at once while in cooldown.
	again, err := tls.Dial("tcp", s.GRPCAddr().String(), client)
	if err == nil {
		again.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = again.Read(make([]byte, 1))
		again.Close()
	}
	if err == nil {
		t.Fatal("a new connection from the offending address was served during its cooldown")
	}
}

func newMetricsForTest() *metrics.Metrics { return metrics.New(nil) }

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// TestInFlightCountsWaitingStreams: a stream holds its place under MaxInFlight from its
// headers on, message or not, so streams that never send their message cannot grow
// without bound; their places come back once they end, however they end.
func TestInFlightCountsWaitingStreams(t *testing.T) {
	const maxInFlight = 4
	var cur atomic.Pointer[config.Set]
	cur.Store(set(t, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true}\n"))
	s := newServer(t, &cur, Options{MaxInFlight: maxInFlight})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	defer func() { cancel(); <-served }()

	cc, err := grpc.NewClient(s.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	rls := rlspb.NewRateLimitServiceClient(cc)
	call := func() codes.Code {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := rls.ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "d", Descriptors: []*rlcommon.RateLimitDescriptor{{
			Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "k", Value: "v"}}}}})
		return status.Code(err)
	}
	if c := call(); c != codes.OK {
		t.Fatalf("before: %v", c)
	}

	conn, err := net.Dial("tcp", s.GRPCAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(conn, conn)
	fr.WriteSettings()
	block := headerBlock()
	for id := uint32(1); id < 2*maxInFlight; id += 2 {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}) // no message, ever
	}
	testutil.WaitFor(t, 10*time.Second, func() bool { return s.inflight.Load() == maxInFlight })
	if c := call(); c != codes.ResourceExhausted {
		t.Fatalf("with %d streams waiting for their message: %v, want RESOURCE_EXHAUSTED", maxInFlight, c)
	}
	// Two of them are reset, the connection of the others closed: every place comes back.
	fr.WriteRSTStream(1, http2.ErrCodeCancel)
	fr.WriteRSTStream(3, http2.ErrCodeCancel)
	testutil.WaitFor(t, 10*time.Second, func() bool { return s.inflight.Load() == maxInFlight-2 })
	conn.Close()
	testutil.WaitFor(t, 10*time.Second, func() bool { return s.inflight.Load() == 0 })
	if c := call(); c != codes.OK {
		t.Fatalf("after: %v", c)
	}
	if n := s.inflight.Load(); n != 0 {
		t.Fatalf("%d places not given back after the call", n)
	}
}
