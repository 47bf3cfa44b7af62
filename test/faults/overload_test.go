package faults

import (
	"context"
	"errors"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/internal/server"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// slowStore is a test device: a memory store whose every Apply takes `delay` (or until
// its context ends), so calls stay in flight long enough to pile up.
type slowStore struct {
	backends.Store
	delay          time.Duration
	inFlight, peak atomic.Int64
}

func (s *slowStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		p := s.peak.Load()
		if n <= p || s.peak.CompareAndSwap(p, n) {
			break
		}
	}
	t := time.NewTimer(s.delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		for _, op := range ops {
			op.Err = backends.ErrUnavailable
		}
		return ctx.Err()
	}
	return s.Store.Apply(ctx, now, ops)
}

type overloadServer struct {
	srv   *server.Server
	store *slowStore
	m     *metrics.Metrics
	cc    *grpc.ClientConn
	rls   rlspb.RateLimitServiceClient
}

func startOverloadServer(t *testing.T, maxInFlight, maxRecv int, delay time.Duration) *overloadServer {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"faults.yaml": []byte(rulesYAML)})
	if err != nil {
		t.Fatal(err)
	}
	mem := memory.New(memory.Config{SweepInterval: -1})
	st := &slowStore{Store: mem, delay: delay}
	m := metrics.New(nil)
	e, err := engine.New(engine.Config{
		Store: st, StoreName: "slow", Rules: func() *config.Set { return set }, Metrics: m,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Engine: e, Service: rlsv3.NewService(e, headers.Families{}), Metrics: m,
		MaxInFlight: maxInFlight, MaxRecvBytes: maxRecv, DrainTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		mem.Close()
	})
	cc, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &overloadServer{srv: srv, store: st, m: m, cc: cc, rls: rlspb.NewRateLimitServiceClient(cc)}
}

func rlRequest(user string) *rlspb.RateLimitRequest {
	return &rlspb.RateLimitRequest{Domain: "faults", Descriptors: []*rlcommon.RateLimitDescriptor{{
		Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: user}},
	}}}
}

func heapInuse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// TestOverloadRefusesFast floods a server bounded to 8 calls in flight, each held 1 s by
// the store: the excess must be refused with RESOURCE_EXHAUSTED at once (not queued),
// admitted calls must take about the store's time, and the heap must stay flat.
func TestOverloadRefusesFast(t *testing.T) {
	const maxInFlight, delay, callers = 8, time.Second, 200
	o := startOverloadServer(t, maxInFlight, 0, delay)
	runtime.GC()
	heap0 := heapInuse()
	var peakHeap atomic.Uint64
	stopSampling := repeatedly(20*time.Millisecond, func() {
		if h := heapInuse(); h > peakHeap.Load() {
			peakHeap.Store(h)
		}
	})

	var mu sync.Mutex
	var admitted, refused []time.Duration
	other := map[string]int{}
	deadline := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				start := time.Now()
				_, err := o.rls.ShouldRateLimit(ctx, rlRequest("flood"))
				el := time.Since(start)
				cancel()
				mu.Lock()
				switch status.Code(err) {
				case codes.OK:
					admitted = append(admitted, el)
				case codes.ResourceExhausted:
					refused = append(refused, el)
				default:
					other[status.Code(err).String()]++
				}
				mu.Unlock()
				if status.Code(err) == codes.ResourceExhausted {
					time.Sleep(time.Millisecond) // Envoy does not retry in a hot loop either
				}
			}
		}()
	}
	wg.Wait()
	stopSampling()
	runtime.GC()
	heap1 := heapInuse()

	t.Logf("%d callers for 3 s against max_in_flight=%d, store delay %v:", callers, maxInFlight, delay)
	t.Logf("  admitted %d: p50 %v p99 %v max %v", len(admitted), percentile(admitted, .5), percentile(admitted, .99), percentile(admitted, 1))
	t.Logf("  refused  %d: p50 %v p99 %v max %v", len(refused), percentile(refused, .5), percentile(refused, .99), percentile(refused, 1))
	t.Logf("  heap in use: %.1f MiB before, peak %.1f MiB, %.1f MiB after GC; peak store concurrency %d",
		float64(heap0)/(1<<20), float64(peakHeap.Load())/(1<<20), float64(heap1)/(1<<20), o.store.peak.Load())
	if len(other) > 0 {
		t.Errorf("answers other than OK and RESOURCE_EXHAUSTED: %v", other)
	}
	if len(refused) == 0 || len(admitted) == 0 {
		t.Fatalf("admitted %d, refused %d: the bound did not bite", len(admitted), len(refused))
	}
	if p := o.store.peak.Load(); p > maxInFlight {
		t.Errorf("%d calls reached the store at once, bound %d", p, maxInFlight)
	}
	// Refusals do not wait for a slot: far below the store's delay (the margin is wide
	// for -race on 2 cores, where 200 client goroutines alone cost ~150 ms a call).
	if p50 := percentile(refused, .5); p50 > delay/2 {
		t.Errorf("refusals are not fast: p50 %v (store delay %v)", p50, delay)
	}
	if mx := percentile(refused, 1); mx > latencyBound {
		t.Errorf("slowest refusal %v", mx)
	}
	if mx := percentile(admitted, 1); mx > delay+latencyBound {
		t.Errorf("slowest admitted call %v, store delay %v", mx, delay)
	}
	if got := counter(o.m, "halt_rejected_total", "reason", "overload"); int(got) != len(refused) {
		t.Errorf("halt_rejected_total{reason=overload} = %v, refused %d", got, len(refused))
	}
	const heapBound = 64 << 20
	if peak := peakHeap.Load(); peak > heap0+heapBound {
		t.Errorf("heap grew from %d to %d under overload (bound +%d)", heap0, peak, heapBound)
	}
}

// TestOversizedAndExpiredRequests: a message over MaxRecvBytes is refused with
// RESOURCE_EXHAUSTED, a call whose deadline passes (or has passed) ends with
// DEADLINE_EXCEEDED, and the server keeps serving.
func TestOversizedAndExpiredRequests(t *testing.T) {
	o := startOverloadServer(t, 8, 4096, 100*time.Millisecond)
	ctx := context.Background()

	big := rlRequest(strings.Repeat("x", 8192))
	_, err := o.rls.ShouldRateLimit(ctx, big)
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("8 KiB request with MaxRecvBytes 4096: %v, want ResourceExhausted", err)
	}

	expired, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	_, err = o.rls.ShouldRateLimit(expired, rlRequest("late"))
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("deadline already passed: %v", err)
	}
	// The deadline passes while the store holds the call.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	start := time.Now()
	_, err = o.rls.ShouldRateLimit(short, rlRequest("late"))
	cancel()
	if status.Code(err) != codes.DeadlineExceeded || time.Since(start) > latencyBound {
		t.Errorf("deadline passing in the store: %v after %v", err, time.Since(start))
	}
	// Tiny deadlines race the server's own check: none may panic or hang.
	for _, d := range []time.Duration{time.Nanosecond, time.Microsecond, 100 * time.Microsecond, time.Millisecond} {
		c, cancel := context.WithTimeout(ctx, d)
		_, err := o.rls.ShouldRateLimit(c, rlRequest("tiny"))
		cancel()
		if code := status.Code(err); code != codes.DeadlineExceeded && code != codes.OK {
			t.Errorf("deadline %v: %v", d, err)
		}
	}
	if _, err := o.rls.ShouldRateLimit(ctx, rlRequest("after")); err != nil {
		t.Fatalf("server unhealthy afterwards: %v", err)
	}
}

// TestManyConnections opens 1,000 client connections (not 10,000: a CI machine with
// 2 cores and a default file limit must survive the test) and makes one call on each at
// once. Each call must be served or refused cleanly, never a transport error or a hang.
func TestManyConnections(t *testing.T) {
	testutil.SkipIfShort(t, "opens 1,000 connections")
	const conns = 1000
	o := startOverloadServer(t, 64, 0, 20*time.Millisecond)
	g0 := runtime.NumGoroutine()
	ccs := make([]*grpc.ClientConn, conns)
	for i := range ccs {
		cc, err := grpc.NewClient(o.srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		ccs[i] = cc
	}
	defer func() {
		for _, cc := range ccs {
			cc.Close()
		}
	}()
	var ok, refused atomic.Int64
	var mu sync.Mutex
	other := map[string]int{}
	var wg sync.WaitGroup
	start := time.Now()
	for i, cc := range ccs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := rlspb.NewRateLimitServiceClient(cc).ShouldRateLimit(ctx, rlRequest("conn"+string(rune('a'+i%26))))
			switch status.Code(err) {
			case codes.OK:
				ok.Add(1)
			case codes.ResourceExhausted:
				refused.Add(1)
			default:
				mu.Lock()
				other[err.Error()]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d connections, one call each: %d served, %d refused (RESOURCE_EXHAUSTED) in %v; goroutines %d -> %d",
		conns, ok.Load(), refused.Load(), time.Since(start).Round(time.Millisecond), g0, runtime.NumGoroutine())
	if len(other) > 0 {
		t.Errorf("unclean answers: %v", other)
	}
	// Every connection still works.
	for _, cc := range ccs[:10] {
		if _, err := rlspb.NewRateLimitServiceClient(cc).ShouldRateLimit(context.Background(), rlRequest("again")); err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("connection unusable afterwards: %v", err)
		}
	}
}

// TestJSONSharesTheBound: POST /json (the reference's HTTP entry point) is admitted under
// the same in-flight bound as gRPC. 2,000 concurrent /json calls against a store that
// holds each call 1 s, with max_in_flight=8: at most 8 reach the store at once, the rest
// are refused with 503 (what /json answers for RESOURCE_EXHAUSTED) instead of waiting for
// a place (which, at 8 a second, would take minutes), and while /json calls hold every
// place gRPC calls are refused too. (A refusal's latency here is mostly the wait for a
// connection: 2,000 clients share the HTTP port's connection cap.)
func TestJSONSharesTheBound(t *testing.T) {
	const maxInFlight, delay, callers = 8, time.Second, 2000
	o := startOverloadServer(t, maxInFlight, 0, delay)
	url := "http://" + o.srv.HTTPAddr().String() + "/json"
	body := `{"domain":"faults","descriptors":[{"entries":[{"key":"user","value":"flood"}]}]}`
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: -1, DisableKeepAlives: true}}

	var mu sync.Mutex
	answers := map[int]int{}
	var refused []time.Duration
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			resp, err := client.Post(url, "application/json", strings.NewReader(body))
			el := time.Since(t0)
			code := 0
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				code = resp.StatusCode
			}
			mu.Lock()
			answers[code]++
			if code == http.StatusServiceUnavailable {
				refused = append(refused, el)
			}
			mu.Unlock()
		}()
	}
	close(start)
	flood := make(chan struct{})
	go func() { wg.Wait(); close(flood) }()
	// While /json calls hold every place (all of them in the store), a gRPC call is
	// refused: one bound for both. A place may come free between the look and the call,
	// so try again until one is refused, for as long as the flood lasts.
	var grpcCode codes.Code
	for refusedGRPC := false; !refusedGRPC; {
		select {
		case <-flood:
			t.Fatalf("no gRPC call was refused while /json calls held the places (last answer %v)", grpcCode)
		case <-time.After(time.Millisecond):
		}
		if o.store.inFlight.Load() < maxInFlight {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := o.rls.ShouldRateLimit(ctx, rlRequest("grpc"))
		cancel()
		grpcCode = status.Code(err)
		refusedGRPC = grpcCode == codes.ResourceExhausted
	}
	<-flood

	t.Logf("%d concurrent /json calls, max_in_flight=%d, store delay %v: answers %v; refusals p50 %v max %v; peak store concurrency %d; gRPC call meanwhile: %v",
		callers, maxInFlight, delay, answers, percentile(refused, .5), percentile(refused, 1), o.store.peak.Load(), grpcCode)
	if p := o.store.peak.Load(); p > maxInFlight {
		t.Errorf("%d /json calls reached the store at once, bound %d", p, maxInFlight)
	}
	if answers[http.StatusServiceUnavailable] == 0 || answers[http.StatusOK]+answers[http.StatusTooManyRequests] == 0 {
		t.Errorf("answers %v: want some admitted and the rest refused with 503", answers)
	}
	if n := answers[http.StatusOK] + answers[http.StatusTooManyRequests] + answers[http.StatusServiceUnavailable]; n != callers {
		t.Errorf("answers %v: %d of %d calls got neither a decision nor a refusal", answers, callers-n, callers)
	}
	if got := counter(o.m, "halt_rejected_total", "reason", "overload"); int(got) < answers[http.StatusServiceUnavailable] {
		t.Errorf("halt_rejected_total{reason=overload} = %v, /json refused %d", got, answers[http.StatusServiceUnavailable])
	}
}
