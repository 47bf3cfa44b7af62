package engine_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/localfirst"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// faultProxy is a TCP proxy on loopback in front of a store: it passes bytes through,
// delays each one by a set time in each direction, or cuts the link (every open
// connection is closed, and new ones are closed as soon as they are accepted).
type faultProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	delay time.Duration
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startProxy(t testing.TB, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.setCut(true)
		p.wg.Wait()
	})
	return p
}

func (p *faultProxy) addr() string { return p.ln.Addr().String() }

func (p *faultProxy) setDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// setCut cuts the link (true) or heals it (false).
func (p *faultProxy) setCut(cut bool) {
	p.mu.Lock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			_ = c.Close()
		}
	}
	p.mu.Unlock()
}

func (p *faultProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		for _, c := range cs {
			_ = c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = in.Close()
			continue
		}
		if !p.track(in, out) {
			continue
		}
		p.wg.Add(2)
		go p.pipe(in, out)
		go p.pipe(out, in)
	}
}

// pipe copies src to dst, each chunk no earlier than the delay after it was read; a
// chunk still held when the connection closes is dropped.
func (p *faultProxy) pipe(src, dst net.Conn) {
	defer p.wg.Done()
	defer func() { _ = dst.Close(); _ = src.Close() }()
	type chunk struct {
		b  []byte
		at time.Time
	}
	ch := make(chan chunk, 1024)
	dead := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range ch {
			if d := time.Until(c.at); d > 0 {
				timer := time.NewTimer(d)
				select {
				case <-timer.C:
				case <-dead:
					timer.Stop()
					return
				}
			}
			if _, err := dst.Write(c.b); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			d := p.delay
			p.mu.Unlock()
			select {
			case ch <- chunk{b: append([]byte(nil), buf[:n]...), at: time.Now().Add(d)}:
			case <-done:
			}
		}
		if err != nil {
			close(dead)
			close(ch)
			<-done
			return
		}
	}
}

// region is one region of a two-region test: its engine, its own store, and the proxy
// in front of that store through which the other region reads it.
type region struct {
	name    string
	store   backends.Store // its own, direct
	proxy   *faultProxy    // in front of its store, for the other region
	eng     *engine.Engine
	regions *localfirst.Regions
	m       *metrics.Metrics
	also    []*localfirst.Regions // synced with it in window (a region with no engine: its heartbeat)
}

var debugRegions = false

const sharedYAML = `domain: d
descriptors:
  - key: tenant
    rate_limit: {unit: second, unit_multiplier: 10, requests_per_unit: 1000, algorithm: %s, regions: shared, sync_interval: 100ms%s}
`

// twoRegions starts regions a (its store at REDIS_ADDR) and b (REDIS_REGION2_ADDR), on
// one fake clock, each reading the other's store through a fault proxy; the reads run
// when the test says (SyncRegions).
func twoRegions(t *testing.T, yaml string, clock engine.Clock) (a, b *region) {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"regions.yaml": []byte(yaml)})
	if err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("rg-%s-%d:", t.Name(), time.Now().UnixNano())
	open := func(addr string) backends.Store {
		s, err := all.Open(context.Background(), "redis://"+addr+"/0", backends.Options{Timeout: 2 * time.Second, KeyPrefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a = &region{name: "a", store: open(testutil.Peer(t, "REDIS_ADDR"))}
	b = &region{name: "b", store: open(testutil.Peer(t, "REDIS_REGION2_ADDR"))}
	for _, r := range []*region{a, b} {
		r.proxy = startProxy(t, mustAddr(t, r))
	}
	for _, pair := range [][2]*region{{a, b}, {b, a}} {
		r, other := pair[0], pair[1]
		// The other region's store, read through its proxy, with a timeout of its own:
		// generous, so that a loaded machine never turns a slow read into a partition.
		remote, err := all.Open(context.Background(), "redis://"+other.proxy.addr()+"/0", backends.Options{Timeout: 5 * time.Second, KeyPrefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { remote.Close() })
		r.m = metrics.New(nil)
		r.regions = localfirst.NewRegions(localfirst.RegionsConfig{Local: r.name, Others: []localfirst.Region{{Name: other.name, Store: remote}},
			Now: clock.Now, Metrics: r.m, Manual: true})
		r.eng, err = engine.New(engine.Config{Store: r.store, StoreName: "redis", Rules: func() *config.Set { return set },
			Clock: clock, Metrics: r.m, LocalFirstAnnounce: time.Second, LocalFirstManual: true, Regions: r.regions})
		if err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

var regionAddrs = map[string]string{"a": "REDIS_ADDR", "b": "REDIS_REGION2_ADDR"}

func mustAddr(t *testing.T, r *region) string { return testutil.Peer(t, regionAddrs[r.name]) }

func (r *region) check(t *testing.T) bool {
	t.Helper()
	decs := make([]engine.Decision, 1)
	if _, err := r.eng.Check(context.Background(), "d", []engine.Descriptor{d(1, "tenant", "t1")}, decs); err != nil {
		t.Fatal(err)
	}
	if l := decs[0].Result.Limit; l != 1000 {
		t.Fatalf("region %s reports a limit of %d, want the shared limit, 1000", r.name, l)
	}
	return decs[0].Code == engine.CodeOK
}

// own reads a region's own count of the shared key in its store (cost 0).
func (r *region) own(t *testing.T, a algorithms.Algorithm, now int64) int64 {
	t.Helper()
	key := string(engine.LimitKey(nil, "d", []config.Entry{{Key: "tenant", Value: "t1"}}, nil, a, 10_000_000)) + "|@region:" + r.name
	op := &backends.Op{Key: key, Algorithm: a, Limit: algorithms.Limit{Requests: algorithms.MaxRequests, Period: 10_000_000}}
	if err := r.store.Apply(context.Background(), now, []*backends.Op{op}); err != nil {
		t.Fatal(err)
	}
	return op.Result.Limit - op.Result.Remaining
}

// window runs traffic on both regions from start for the window's length: a call every
// 2 ms, one in four to region a, the others to b (a gets 12.5 calls per 100 ms, b 37.5),
// both
// reading the other every 100 ms (read errors are the partition's); at offset at, do
// runs once. It returns what each region admitted.
func window(t *testing.T, clock *fakeClock, a, b *region, start time.Time, at time.Duration, do func()) (admA, admB int64) {
	t.Helper()
	clock.mu.Lock()
	clock.now = start
	clock.mu.Unlock()
	const step = 2 * time.Millisecond
	end := start.Add(10 * time.Second)
	for i := 0; clock.Now().Before(end); i++ {
		if time.Duration(i)*step == at && do != nil {
			do()
		}
		if i%50 == 0 {
			for _, r := range []*region{a, b} {
				if err := r.eng.SyncRegions(context.Background()); err != nil && debugRegions {
					t.Logf("%s at %v: %v", r.name, clock.Now().Sub(start), err)
				}
				for _, x := range r.also {
					if err := x.Sync(context.Background(), clock.Now().UnixMicro()); err != nil && debugRegions {
						t.Logf("%s at %v: %v", x.Local(), clock.Now().Sub(start), err)
					}
				}
			}
		}
		if i%4 == 0 {
			if a.check(t) {
				admA++
			}
		} else if b.check(t) {
			admB++
		}
		clock.Add(step)
	}
	return admA, admB
}

// TestRegionsSharedLimit: two regions, each with its own Redis, share one limit of 1,000
// per 10 s. Connected, they admit together at least the limit and at most the limit
// plus what the other region admits in one read interval (38 here): the bound of
// docs/consistency.md. A partition (the proxies cut the links) holds each region to its
// share (500) once the other's counts are older than the stale bound (1 s), and never
// refuses it (never fail-open, never fail-closed); after healing, each region's view of
// the other equals the other's own count within two read intervals, and the limit is
// shared again.
func TestRegionsSharedLimit(t *testing.T) {
	for _, alg := range []algorithms.Algorithm{algorithms.FixedWindow, algorithms.SlidingWindowCounter} {
		t.Run(alg.String(), func(t *testing.T) {
			clock := &fakeClock{now: t0}
			a, b := twoRegions(t, fmt.Sprintf(sharedYAML, alg, ""), clock)
			// The bound connected: the limit, plus what the busier region (b) admits in
			// one read interval (38 calls).
			const limit, perRead = 1000, 38
			win := func(n int) time.Time { return t0.Add(time.Duration(n) * 10 * time.Second) }
			fixed := alg == algorithms.FixedWindow

			// Window 1, connected.
			admA, admB := window(t, clock, a, b, win(1), -1, nil)
			t.Logf("connected: a %d, b %d, total %d", admA, admB, admA+admB)
			if tot := admA + admB; tot < limit || tot > limit+perRead {
				t.Errorf("connected: admitted %d, want between %d and %d", tot, limit, limit+perRead)
			}
			// The reads did go through the proxies: a cut link gives the same total (500
			// each, the shares), so the total alone proves nothing. Only the calls before
			// a key's first read (the first 100 ms, 50 calls in all) are held.
			for _, r := range []*region{a, b} {
				other := map[string]string{"a": "b", "b": "a"}[r.name]
				if e, h := promtest.ToFloat64(r.m.RegionReadErrors.WithLabelValues(other)), promtest.ToFloat64(r.m.RegionShareDecisions); e != 0 || h > 50 {
					t.Errorf("connected: region %s failed %v reads of %s and held %v decisions to its share, want 0 and at most 50", r.name, e, other, h)
				}
			}
			if !fixed {
				// A sliding counter's previous window weighs on the next ones; the rest
				// of the test is the fixed window's (its windows start whole).
				return
			}

			// Window 2: the links are cut 1 s in, before the limit is reached. Each region
			// decides on the last counts read until they are older than the stale bound
			// (1 s), then stops at its share or where it already is: the regions admit at
			// most the sum, over regions, of the larger of its share (500) and its count
			// when its counts went stale, which here is at most its calls until 2 s (the
			// cut, the stale bound, and the read before the cut up to 100 ms earlier):
			// a 250, b 750, so 500 + 750.
			admA, admB = window(t, clock, a, b, win(2), time.Second, func() { a.proxy.setCut(true); b.proxy.setCut(true) })
			t.Logf("cut at 1 s: a %d, b %d, total %d", admA, admB, admA+admB)
			if tot := admA + admB; tot < limit || tot > 500+750 || admA > 500 || admB > 750 {
				t.Errorf("partition from mid-window: a admitted %d, b %d, want a <= 500, b <= 750 and a total of at least %d", admA, admB, limit)
			}

			// Window 3, partitioned throughout: each region admits its share, exactly.
			admA, admB = window(t, clock, a, b, win(3), -1, nil)
			t.Logf("partitioned: a %d, b %d", admA, admB)
			if admA != limit/2 || admB != limit/2 {
				t.Errorf("partitioned: a admitted %d, b %d, want its share, %d each", admA, admB, limit/2)
			}
			for _, r := range []*region{a, b} {
				if promtest.ToFloat64(r.m.RegionShareDecisions) == 0 || promtest.ToFloat64(r.m.RegionReadErrors.WithLabelValues(map[string]string{"a": "b", "b": "a"}[r.name])) == 0 {
					t.Errorf("region %s: no share decisions or read errors counted during the partition", r.name)
				}
			}

			// Window 4: healed 1 s in. Within two read intervals (no calls meanwhile) each
			// region sees the other's own count; the window admits within the connected
			// bound.
			key := string(engine.LimitKey(nil, "d", []config.Entry{{Key: "tenant", Value: "t1"}}, nil, alg, 10_000_000))
			admA, admB = window(t, clock, a, b, win(4), time.Second, func() {
				a.proxy.setCut(false)
				b.proxy.setCut(false)
				for range 2 {
					clock.Add(100 * time.Millisecond)
					for _, r := range []*region{a, b} {
						_ = r.eng.SyncRegions(context.Background()) // the first may find a connection the cut closed
					}
				}
				now := clock.Now().UnixMicro()
				for _, pair := range [][2]*region{{a, b}, {b, a}} {
					seen, at, ok := pair[0].regions.Seen(key, pair[1].name)
					if own := pair[1].own(t, alg, now); !ok || seen != own || now-at > 100_000 {
						t.Errorf("after healing: %s sees %d of %s (read %v, %d us ago), which counts %d", pair[0].name, seen, pair[1].name, ok, now-at, own)
					}
				}
			})
			t.Logf("healed at 1 s: a %d, b %d, total %d", admA, admB, admA+admB)
			if tot := admA + admB; tot < limit || tot > limit+perRead {
				t.Errorf("healed: admitted %d, want between %d and %d", tot, limit, limit+perRead)
			}
		})
	}
}

// TestRegionsRemoteNeverOnRequestPath: with the other region's store behind a proxy
// that holds every byte for an hour, no read of it is ever answered, and decisions go
// on all the same (the reads run in their own loop): held to this region's share, since
// no count of the other region was ever read. BenchmarkRegions measures their latency
// with 80 ms each way in front of the other region.
func TestRegionsRemoteNeverOnRequestPath(t *testing.T) {
	set, err := config.Parse(map[string][]byte{"r.yaml": []byte(fmt.Sprintf(sharedYAML, "fixed_window", ""))})
	if err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("rg-path-%d:", time.Now().UnixNano())
	own, err := all.Open(context.Background(), "redis://"+testutil.Peer(t, "REDIS_ADDR")+"/0", backends.Options{Timeout: 2 * time.Second, KeyPrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	p := startProxy(t, testutil.Peer(t, "REDIS_REGION2_ADDR"))
	p.setDelay(time.Hour) // no read is ever answered
	remote, err := all.Open(context.Background(), "redis://"+p.addr()+"/0", backends.Options{Timeout: time.Second, KeyPrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	// The reads run in their loop on the real clock; the decisions on a fake one, so that
	// no window ends during the test.
	regions := localfirst.NewRegions(localfirst.RegionsConfig{Local: "a", Others: []localfirst.Region{{Name: "b", Store: remote}}})
	eng, err := engine.New(engine.Config{Store: own, Rules: func() *config.Set { return set }, Regions: regions, Clock: &fakeClock{now: t0}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = eng.Close(context.Background()) }()
	// The reads of b never come back; decisions go on, held to a's share (500) since no
	// count of b was ever read.
	admitted := 0
	for range 600 {
		decs := make([]engine.Decision, 1)
		if _, err := eng.Check(context.Background(), "d", []engine.Descriptor{d(1, "tenant", "t1")}, decs); err != nil {
			t.Fatal(err)
		}
		if decs[0].Code == engine.CodeOK {
			admitted++
		}
	}
	if admitted > 500 {
		t.Errorf("admitted %d with the other region never read, want at most the share, 500", admitted)
	}
	if _, _, ok := regions.Seen(string(engine.LimitKey(nil, "d", []config.Entry{{Key: "tenant", Value: "t1"}}, nil, algorithms.FixedWindow, 10_000_000)), "b"); ok {
		t.Error("a read of b was answered through a proxy that holds every byte for an hour")
	}
}

// TestRegionsAdminState: the admin API's reads and resets of a shared limit are this
// region's: Limits reports what is left of the whole limit (the other regions' counts as
// last read, and this region's own), and ResetLimits clears this region's count.
func TestRegionsAdminState(t *testing.T) {
	set, err := config.Parse(map[string][]byte{"r.yaml": []byte(fmt.Sprintf(sharedYAML, "fixed_window", ""))})
	if err != nil {
		t.Fatal(err)
	}
	own, other := memory.New(memory.Config{SweepInterval: -1}), memory.New(memory.Config{SweepInterval: -1})
	defer own.Close()
	defer other.Close()
	clock := &fakeClock{now: t0.Add(10 * time.Second)}
	regions := localfirst.NewRegions(localfirst.RegionsConfig{Local: "a", Others: []localfirst.Region{{Name: "b", Store: other}}, Now: clock.Now, Manual: true})
	eng, err := engine.New(engine.Config{Store: own, Rules: func() *config.Set { return set }, Clock: clock, Regions: regions})
	if err != nil {
		t.Fatal(err)
	}
	ents := []config.Entry{{Key: "tenant", Value: "t1"}}
	key := string(engine.LimitKey(nil, "d", ents, nil, algorithms.FixedWindow, 10_000_000))
	// Region b counted 600 of the 1,000.
	op := &backends.Op{Key: key + "|@region:b", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 1000, Period: 10_000_000}, Cost: 600}
	if err := other.Apply(context.Background(), clock.Now().UnixMicro(), []*backends.Op{op}); err != nil || !op.Result.Allowed {
		t.Fatalf("%v %+v", err, op.Result)
	}
	rule, _ := set.Match("d", ents)
	remaining := func() (int64, bool) {
		t.Helper()
		st, err := eng.Limits(context.Background(), "d", ents, rule)
		if err != nil || len(st) != 1 {
			t.Fatalf("Limits: %v %v", st, err)
		}
		return st[0].Remaining, st[0].Allowed
	}
	remaining() // the key is read from now on
	if err := eng.SyncRegions(context.Background()); err != nil {
		t.Fatal(err)
	}
	if rem, ok := remaining(); rem != 400 || !ok {
		t.Fatalf("b at 600: remaining %d allowed %v, want 400", rem, ok)
	}
	admitted := 0
	for range 500 {
		decs := make([]engine.Decision, 1)
		if _, err := eng.Check(context.Background(), "d", []engine.Descriptor{d(1, "tenant", "t1")}, decs); err != nil {
			t.Fatal(err)
		}
		if decs[0].Code == engine.CodeOK {
			admitted++
		}
	}
	if rem, ok := remaining(); admitted != 400 || rem != 0 || ok {
		t.Fatalf("admitted %d, then remaining %d allowed %v, want 400, 0, false", admitted, rem, ok)
	}
	if err := eng.ResetLimits(context.Background(), "d", ents, rule); err != nil {
		t.Fatal(err)
	}
	if rem, ok := remaining(); rem != 400 || !ok {
		t.Fatalf("after a reset of a's count: remaining %d allowed %v, want 400", rem, ok)
	}
}

// TestRegionsRefund: a refund of a shared fixed window gives back from this region's
// own count, whatever the other regions left: a admitted 300 while b counted 200, then
// b reached 800; a refund of 1 leaves a at 299 (decided within what b left, 200, a
// fixed window would have forgiven 100 of a's admitted hits as if they were above the
// limit, and left it at 199).
func TestRegionsRefund(t *testing.T) {
	set, err := config.Parse(map[string][]byte{"r.yaml": []byte(fmt.Sprintf(sharedYAML, "fixed_window", ""))})
	if err != nil {
		t.Fatal(err)
	}
	own, other := memory.New(memory.Config{SweepInterval: -1}), memory.New(memory.Config{SweepInterval: -1})
	defer own.Close()
	defer other.Close()
	clock := &fakeClock{now: t0.Add(10 * time.Second)}
	regions := localfirst.NewRegions(localfirst.RegionsConfig{Local: "a", Others: []localfirst.Region{{Name: "b", Store: other}}, Now: clock.Now, Manual: true})
	eng, err := engine.New(engine.Config{Store: own, Rules: func() *config.Set { return set }, Clock: clock, Regions: regions})
	if err != nil {
		t.Fatal(err)
	}
	ents := []config.Entry{{Key: "tenant", Value: "t1"}}
	key := string(engine.LimitKey(nil, "d", ents, nil, algorithms.FixedWindow, 10_000_000))
	count := func(s backends.Store, sub string, n int64) int64 {
		t.Helper()
		op := &backends.Op{Key: key + "|@region:" + sub, Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 1000, Period: 10_000_000}, Cost: n}
		if err := s.Apply(context.Background(), clock.Now().UnixMicro(), []*backends.Op{op}); err != nil {
			t.Fatal(err)
		}
		return op.Result.Limit - op.Result.Remaining
	}
	check := func(hits uint64, refund bool) {
		t.Helper()
		desc := d(hits, "tenant", "t1")
		desc.Refund = refund
		decs := make([]engine.Decision, 1)
		if _, err := eng.Check(context.Background(), "d", []engine.Descriptor{desc}, decs); err != nil {
			t.Fatal(err)
		}
	}
	check(1, false) // the key is read from now on
	count(other, "b", 200)
	if err := eng.SyncRegions(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range 299 {
		check(1, false)
	}
	count(other, "b", 600) // b at 800
	clock.Add(100 * time.Millisecond)
	if err := eng.SyncRegions(context.Background()); err != nil {
		t.Fatal(err)
	}
	check(1, true)
	if got := count(own, "a", 0); got != 299 {
		t.Fatalf("a counts %d after a refund of 1 from 300, want 299", got)
	}
}

// regionsMemory is region a of a deployment whose other region, b, has its own memory
// store; the reads run when the test says (SyncRegions).
func regionsMemory(t *testing.T, yaml string, clock *fakeClock, m *metrics.Metrics) (eng *engine.Engine, other backends.Store, regions *localfirst.Regions) {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"r.yaml": []byte(yaml)})
	if err != nil {
		t.Fatal(err)
	}
	own, o := memory.New(memory.Config{SweepInterval: -1}), memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { own.Close(); o.Close() })
	regions = localfirst.NewRegions(localfirst.RegionsConfig{Local: "a", Others: []localfirst.Region{{Name: "b", Store: o}}, Now: clock.Now, Metrics: m, Manual: true})
	eng, err = engine.New(engine.Config{Store: own, Rules: func() *config.Set { return set }, Clock: clock, Metrics: m, Regions: regions})
	if err != nil {
		t.Fatal(err)
	}
	return eng, o, regions
}

// TestRegionsLongSyncInterval: a shared limit read every 5 s (a daily or hourly limit
// whose user spares the cross-region reads) is not held to this region's share between
// two reads that both answered: its counts are as fresh as its sync_interval makes them.
// It was held to the share whenever the last read was older than --region-stale-after
// (1 s): three quarters of every interval, on a healthy link, with no alert.
func TestRegionsLongSyncInterval(t *testing.T) {
	const yaml = `domain: d
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 1000, regions: shared, sync_interval: 5s}
`
	clock := &fakeClock{now: t0}
	m := metrics.New(nil)
	eng, _, _ := regionsMemory(t, yaml, clock, m)
	check := func() bool {
		t.Helper()
		decs := make([]engine.Decision, 1)
		if _, err := eng.Check(context.Background(), "d", []engine.Descriptor{d(1, "tenant", "t1")}, decs); err != nil {
			t.Fatal(err)
		}
		return decs[0].Code == engine.CodeOK
	}
	check() // the key is read from now on
	if err := eng.SyncRegions(context.Background()); err != nil {
		t.Fatal(err)
	}
	held := promtest.ToFloat64(m.RegionShareDecisions)
	clock.Add(2 * time.Second) // the next read is not due before 3.75 s
	admitted := 1
	for range 799 {
		if check() {
			admitted++
		}
	}
	if admitted != 800 {
		t.Fatalf("2 s after a read that answered (b counted 0), admitted %d of 800, want 800 of the shared 1,000 (the share is 500)", admitted)
	}
	if n := promtest.ToFloat64(m.RegionShareDecisions) - held; n != 0 {
		t.Fatalf("%v decisions held to the share on a link that answers every read", n)
	}
}

// TestRegionsShareMetricDecisionsOnly: halt_region_share_decisions_total counts the
// decisions held to the share, not the admin API's reads of a shared limit (nor
// refunds, which are never held): it counted every read, and an operator polling /limits
// saw a partition that was not there.
func TestRegionsShareMetricDecisionsOnly(t *testing.T) {
	clock := &fakeClock{now: t0}
	m := metrics.New(nil)
	eng, _, _ := regionsMemory(t, fmt.Sprintf(sharedYAML, "fixed_window", ""), clock, m)
	ents := []config.Entry{{Key: "tenant", Value: "t1"}}
	set, err := config.Parse(map[string][]byte{"r.yaml": []byte(fmt.Sprintf(sharedYAML, "fixed_window", ""))})
	if err != nil {
		t.Fatal(err)
	}
	rule, _ := set.Match("d", ents)
	for range 3 { // before any read: the key would be held to the share
		if _, err := eng.Limits(context.Background(), "d", ents, rule); err != nil {
			t.Fatal(err)
		}
	}
	refund := d(1, "tenant", "t1")
	refund.Refund = true
	decs := make([]engine.Decision, 1)
	if _, err := eng.Check(context.Background(), "d", []engine.Descriptor{refund}, decs); err != nil {
		t.Fatal(err)
	}
	if n := promtest.ToFloat64(m.RegionShareDecisions); n != 0 {
		t.Fatalf("%v decisions held to the share after three admin reads and a refund, want 0", n)
	}
	if _, err := eng.Check(context.Background(), "d", []engine.Descriptor{d(1, "tenant", "t1")}, decs); err != nil {
		t.Fatal(err)
	}
	if n := promtest.ToFloat64(m.RegionShareDecisions); n != 1 {
		t.Fatalf("%v decisions held to the share after one decision before the first read, want 1", n)
	}
}

// TestRegionsPerSecondStore: with a store of its own for one-second limits
// (--store-per-second), a region's sub-counter of a shared one-second limit stays in its
// main store, where the other regions read it (--region-store): it went to the
// per-second store, which no other region reads, and each region admitted the whole
// limit.
func TestRegionsPerSecondStore(t *testing.T) {
	const yaml = `domain: d
descriptors:
  - key: tenant
    rate_limit: {unit: second, requests_per_unit: 1000, regions: shared, sync_interval: 100ms}
`
	set, err := config.Parse(map[string][]byte{"r.yaml": []byte(yaml)})
	if err != nil {
		t.Fatal(err)
	}
	mem := func() backends.Store {
		s := memory.New(memory.Config{SweepInterval: -1})
		t.Cleanup(func() { s.Close() })
		return s
	}
	mainA, mainB := mem(), mem()
	clock := &fakeClock{now: t0}
	start := func(local, other string, main, otherMain backends.Store) *engine.Engine {
		regions := localfirst.NewRegions(localfirst.RegionsConfig{Local: local, Others: []localfirst.Region{{Name: other, Store: otherMain}}, Now: clock.Now, Manual: true})
		eng, err := engine.New(engine.Config{Store: &backends.PerSecond{Main: main, Second: mem()}, Rules: func() *config.Set { return set }, Clock: clock, Regions: regions})
		if err != nil {
			t.Fatal(err)
		}
		return eng
	}
	a, b := start("a", "b", mainA, mainB), start("b", "a", mainB, mainA)
	check := func(eng *engine.Engine, n int) (admitted int) {
		t.Helper()
		for range n {
			decs := make([]engine.Decision, 1)
			if _, err := eng.Check(context.Background(), "d", []engine.Descriptor{d(1, "tenant", "t1")}, decs); err != nil {
				t.Fatal(err)
			}
			if decs[0].Code == engine.CodeOK {
				admitted++
			}
		}
		return admitted
	}
	check(a, 1) // both keys are read from now on
	check(b, 1)
	for _, e := range []*engine.Engine{a, b} {
		if err := e.SyncRegions(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	admB := 1 + check(b, 599)
	clock.Add(100 * time.Millisecond)
	if err := a.SyncRegions(context.Background()); err != nil {
		t.Fatal(err)
	}
	if admA := 1 + check(a, 1000); admA+admB != 1000 {
		t.Fatalf("a admitted %d after b admitted %d of a shared 1,000 a second: %d in all", admA, admB, admA+admB)
	}
}

// TestRegionsResetOverride: the admin reset of a shared limit whose rule allows
// per-request algorithm overrides clears this region's sub-counter of the other
// algorithm a request may share it under (sliding_window_counter for a fixed_window): it
// cleared that algorithm's plain key, which nobody counts in, and the requests that ask
// for it stayed refused.
func TestRegionsResetOverride(t *testing.T) {
	const yaml = `domain: d
descriptors:
  - key: tenant
    allow_algorithm_override: true
    rate_limit: {unit: minute, requests_per_unit: 3, regions: shared}
`
	clock := &fakeClock{now: t0}
	eng, _, _ := regionsMemory(t, yaml, clock, nil)
	ask := func() bool {
		t.Helper()
		decs := make([]engine.Decision, 1)
		desc := d(1, "tenant", "t1", engine.AlgorithmKey, "sliding_window_counter")
		if _, err := eng.Check(context.Background(), "d", []engine.Descriptor{desc}, decs); err != nil {
			t.Fatal(err)
		}
		return decs[0].Code == engine.CodeOK
	}
	ask() // the key is read from now on
	if err := eng.SyncRegions(context.Background()); err != nil {
		t.Fatal(err)
	}
	ask()
	ask()
	if ask() {
		t.Fatal("a fourth hit of 3 a minute admitted")
	}
	set, err := config.Parse(map[string][]byte{"r.yaml": []byte(yaml)})
	if err != nil {
		t.Fatal(err)
	}
	ents := []config.Entry{{Key: "tenant", Value: "t1"}}
	rule, _ := set.Match("d", ents)
	if err := eng.ResetLimits(context.Background(), "d", ents, rule); err != nil {
		t.Fatal(err)
	}
	if !ask() {
		t.Fatal("after an admin reset, a request asking for sliding_window_counter is still refused")
	}
}

// TestRegionsReloadShorterInterval: a configuration reload that shortens a shared
// limit's sync_interval (10 s to 100 ms) reads the other regions at the new pace from the
// next tick of the background loop; the loop slept until the old interval's next read
// was due, and the key was held to the share meanwhile. The background loop runs for
// real here, on the test's clock; the waits are generous multiples of its 5 ms tick.
func TestRegionsReloadShorterInterval(t *testing.T) {
	const yaml = `domain: d
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 1000, regions: shared, sync_interval: %s}
`
	parse := func(interval string) *config.Set {
		set, err := config.Parse(map[string][]byte{"r.yaml": []byte(fmt.Sprintf(yaml, interval))})
		if err != nil {
			t.Fatal(err)
		}
		return set
	}
	var cur atomic.Pointer[config.Set]
	cur.Store(parse("10s"))
	clock := &fakeClock{now: t0}
	own, other := memory.New(memory.Config{SweepInterval: -1}), memory.New(memory.Config{SweepInterval: -1})
	defer own.Close()
	defer other.Close()
	regions := localfirst.NewRegions(localfirst.RegionsConfig{Local: "a", Others: []localfirst.Region{{Name: "b", Store: other}}, Now: clock.Now})
	eng, err := engine.New(engine.Config{Store: own, Rules: cur.Load, Clock: clock, Regions: regions})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close(context.Background())
	check := func() {
		t.Helper()
		decs := make([]engine.Decision, 1)
		if _, err := eng.Check(context.Background(), "d", []engine.Descriptor{d(1, "tenant", "t1")}, decs); err != nil {
			t.Fatal(err)
		}
	}
	key := string(engine.LimitKey(nil, "d", []config.Entry{{Key: "tenant", Value: "t1"}}, nil, algorithms.FixedWindow, 60_000_000))
	waitSeen := func(want int64) bool {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if n, _, ok := regions.Seen(key, "b"); ok && n == want {
				return true
			}
		}
		return false
	}
	check()
	if !waitSeen(0) {
		t.Fatal("the first read of region b never came")
	}
	op := &backends.Op{Key: key + "|@region:b", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 1000, Period: 60_000_000}, Cost: 600}
	if err := other.Apply(context.Background(), clock.Now().UnixMicro(), []*backends.Op{op}); err != nil {
		t.Fatal(err)
	}
	cur.Store(parse("100ms"))
	clock.Add(200 * time.Millisecond)
	check()
	if !waitSeen(600) {
		t.Fatal("reloaded to a sync_interval of 100ms, region b was not read again 200ms later (it was due 7.5s after the first read)")
	}
}
