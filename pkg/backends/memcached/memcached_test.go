package memcached

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

func testAddr(t testing.TB) string {
	t.Helper()
	return testutil.Peer(t, "MEMCACHED_ADDR")
}

func openTest(t testing.TB, cfg Config) *Store {
	t.Helper()
	if len(cfg.Servers) == 0 {
		cfg.Servers = strings.Split(testAddr(t), ",")
	}
	s, err := New(cfg, backends.Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	testAddr(t)
	conformance.Run(t, func(t *testing.T) backends.Store { return openTest(t, Config{}) }, conformance.Options{
		// 0 of 640 ops gave up in every case of three runs with the default 100 CAS
		// attempts (go test -race -run 'TestConformance$/concurrency' -v ./pkg/backends/memcached);
		// the allowance only keeps a loaded machine from failing the run.
		MaxContention: 0.05,
		Reason:        "a compare-and-swap store gives up after cas_attempts lost races",
	})
}

func TestRingMovesFewKeys(t *testing.T) {
	servers := []string{"127.0.0.1:11001", "127.0.0.1:11002", "127.0.0.1:11003"}
	r3, err := NewRing(servers...)
	if err != nil {
		t.Fatal(err)
	}
	r4, err := NewRing(append(servers, "127.0.0.1:11004")...)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	moved := 0
	perServer := map[string]int{}
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("key-%d", i)
		a, _ := r3.PickServer(k)
		b, _ := r4.PickServer(k)
		perServer[a.String()]++
		if a.String() != b.String() {
			moved++
			if b.String() != "127.0.0.1:11004" {
				t.Fatalf("key %s moved between old servers %s -> %s", k, a, b)
			}
		}
	}
	frac := float64(moved) / n
	t.Logf("adding a 4th server moved %.1f%% of keys (ideal 25%%); spread over 3: %v", 100*frac, perServer)
	if frac < 0.15 || frac > 0.35 {
		t.Fatalf("moved %.1f%% of keys, want about 25%%", 100*frac)
	}
	for s, c := range perServer {
		if c < n/3*7/10 || c > n/3*13/10 {
			t.Fatalf("server %s got %d of %d keys: uneven", s, c, n)
		}
	}
	// Same list, same ring: every replica agrees.
	again, _ := NewRing(servers...)
	for i := 0; i < 1000; i++ {
		k := fmt.Sprintf("k%d", i)
		a, _ := r3.PickServer(k)
		b, _ := again.PickServer(k)
		if a.String() != b.String() {
			t.Fatal("ring is not deterministic")
		}
	}
	if _, err := NewRing(); err == nil {
		t.Fatal("empty ring accepted")
	}
	if _, err := NewRing("a:1", "a:1"); err == nil {
		t.Fatal("duplicate server accepted")
	}
}

func TestKeys(t *testing.T) {
	s := &Store{opt: backends.Options{KeyPrefix: "p/"}}
	long := strings.Repeat("x", 400)
	cases := map[string]bool{"plain": true, "with space": false, "ctl\x01": false, long: false, "ünïcode": true}
	seen := map[string]string{}
	for k, plain := range cases {
		ik := s.itemKey(k)
		if len(ik) > maxKeyLen || !legalKey(ik) {
			t.Fatalf("%q -> illegal memcached key %q", k, ik)
		}
		if plain != strings.HasPrefix(ik, "h:p/") {
			t.Fatalf("%q -> %q", k, ik)
		}
		if o, dup := seen[ik]; dup {
			t.Fatalf("%q and %q collide", k, o)
		}
		seen[ik] = k
	}
}

func TestOddKeysWork(t *testing.T) {
	s := openTest(t, Config{})
	defer s.Close()
	p := conformance.UniqueKey(t)
	lim := algorithms.Limit{Requests: 1, Period: 60_000_000}
	// One instant for every hit: a minute's edge between a key's two hits would open a
	// new window and admit the second.
	now := time.Now().UnixMicro()
	for _, k := range []string{p + " with spaces", p + "\n\x00ctl", p + strings.Repeat("L", 1000)} {
		for i, want := range []bool{true, false} {
			op := &backends.Op{Key: k, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
			if err := s.Apply(context.Background(), now, []*backends.Op{op}); err != nil {
				t.Fatalf("key %q: %v", k[:20], err)
			}
			if op.Result.Allowed != want {
				t.Fatalf("key %q hit %d: allowed=%v", k[:20], i, op.Result.Allowed)
			}
		}
	}
}

func TestExpiration(t *testing.T) {
	fixed := time.Unix(1_900_000_000, 0)
	s := &Store{cfg: Config{Now: func() time.Time { return fixed }}}
	const day = 24 * 3600 * int64(1_000_000)
	for _, c := range []struct {
		ttl  int64
		want int32
	}{
		{0, 2},
		{500_000, 2},
		{1_000_000, 2},
		{1_500_000, 3},
		{60_000_000, 61},
		{29 * day, int32(29*24*3600 + 1)},
		{31 * day, int32(1_900_000_000 + 31*24*3600 + 1)},
		{100 * 366 * day, 0}, // beyond 2038
		{math64, 0},
	} {
		if got := s.expiration(c.ttl); got != c.want {
			t.Errorf("ttl %dus: expiration %d, want %d", c.ttl, got, c.want)
		}
	}
}

const math64 = int64(1) << 62

// TestFullSlidingLog stores a sliding log at its bound, with the widest entries a
// 100-year window allows (a delta of Period/MaxSlidingLog and a cost of 1 each), and
// checks that it round-trips through memcached and still decides like the algorithms.
func TestFullSlidingLog(t *testing.T) {
	s := openTest(t, Config{})
	defer s.Close()
	key := conformance.UniqueKey(t)
	lim := algorithms.Limit{Requests: algorithms.MaxSlidingLog, Period: algorithms.MaxPeriod}
	step := lim.Period / algorithms.MaxSlidingLog
	start := time.Now().UnixMicro()
	var model algorithms.State
	for i := int64(0); i < algorithms.MaxSlidingLog-1; i++ {
		model.Log = append(model.Log, algorithms.Entry{At: start + i*step, Cost: 1})
	}
	model.B = int64(len(model.Log)) // the algorithms cache the log's cost sum in B
	now := start + (algorithms.MaxSlidingLog-1)*step
	val := backends.EncodeState(nil, &model)
	t.Logf("log of %d entries encodes in %d bytes (memcached's default item limit is 1 MiB)", len(model.Log), len(val))
	if err := s.mc.Set(&memcache.Item{Key: s.itemKey(key), Value: val, Flags: itemFlags}); err != nil {
		t.Fatal(err)
	}
	for i, at := range []int64{now, now + 1, now + step} {
		op := &backends.Op{Key: key, Algorithm: algorithms.SlidingWindow, Limit: lim, Cost: 1}
		if err := s.Apply(context.Background(), at, []*backends.Op{op}); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		want := algorithms.Decide(algorithms.SlidingWindow, &model, at, &lim, 1)
		if op.Result != want {
			t.Fatalf("request %d: got %+v want %+v", i, op.Result, want)
		}
	}
	it, err := s.mc.Get(s.itemKey(key))
	if err != nil {
		t.Fatal(err)
	}
	var got algorithms.State
	if err := backends.DecodeState(it.Value, &got); err != nil || int64(len(got.Log)) != algorithms.MaxSlidingLog {
		t.Fatalf("stored log has %d entries (%v), want %d", len(got.Log), err, algorithms.MaxSlidingLog)
	}
}

func TestGarbageIsCorrupt(t *testing.T) {
	s := openTest(t, Config{})
	defer s.Close()
	lim := algorithms.Limit{Requests: 5, Period: 60_000_000}
	for i, it := range []*memcache.Item{
		{Value: []byte("hello"), Flags: 0},
		{Value: []byte("\x07garbage"), Flags: itemFlags},
		{Value: []byte{1, 2}, Flags: itemFlags},
	} {
		key := fmt.Sprintf("%s-%d", conformance.UniqueKey(t), i)
		it.Key = s.itemKey(key)
		if err := s.mc.Set(it); err != nil {
			t.Fatal(err)
		}
		op := &backends.Op{Key: key, Algorithm: algorithms.TokenBucket, Limit: lim, Cost: 1}
		err := s.Apply(context.Background(), time.Now().UnixMicro(), []*backends.Op{op})
		if !errors.Is(err, backends.ErrCorrupt) || !errors.Is(op.Err, backends.ErrCorrupt) || op.Result.Allowed {
			t.Fatalf("garbage %q: err=%v result=%+v", it.Value, err, op.Result)
		}
		if errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("corrupt value reported as an outage: %v", err)
		}
	}
}

func TestServerDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	s, err := New(Config{Servers: []string{addr}}, backends.Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	op := &backends.Op{Key: "k", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 5, Period: 1_000_000}, Cost: 1}
	start := time.Now()
	err = s.Apply(context.Background(), time.Now().UnixMicro(), []*backends.Op{op, op})
	if !errors.Is(err, backends.ErrUnavailable) || !errors.Is(op.Err, backends.ErrUnavailable) || op.Result.Allowed {
		t.Fatalf("down server: %v", err)
	}
	if err := s.Ping(context.Background()); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("ping: %v", err)
	}
	if el := time.Since(start); el > conformance.Within(100*time.Millisecond) {
		t.Fatalf("took %v with a 100ms timeout", el)
	}

	// A server that accepts but never answers: bounded by the timeout.
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	go func() {
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	s2, _ := New(Config{Servers: []string{hang.Addr().String()}}, backends.Options{Timeout: 100 * time.Millisecond})
	defer s2.Close()
	start = time.Now()
	err = s2.Apply(context.Background(), time.Now().UnixMicro(), []*backends.Op{op})
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("hanging server: %v", err)
	}
	if el := time.Since(start); el > conformance.Within(100*time.Millisecond) {
		t.Fatalf("hanging server took %v with a 100ms timeout", el)
	}
}

func TestOpenURL(t *testing.T) {
	s, err := OpenURL("memcached://127.0.0.1:1,127.0.0.1:2?cas_attempts=5&max_idle_conns=3", backends.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.sel.(*Ring).addrs) != 2 || s.cfg.CASAttempts != 5 || s.cas.Attempts != 5 || s.cfg.MaxIdleConns != 3 {
		t.Fatalf("%+v", s.cfg)
	}
	s.Close()
	// max_retries is the old name of cas_attempts: still read, with a warning.
	var logged testutil.SyncBuffer
	s, err = OpenURL("memcached://127.0.0.1:1?max_retries=7", backends.Options{Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s.cfg.CASAttempts != 7 || !strings.Contains(logged.String(), "max_retries (now cas_attempts)") {
		t.Fatalf("max_retries=7: cas_attempts %d, log %q", s.cfg.CASAttempts, logged.String())
	}
	for _, bad := range []string{"memcached://", "memcached://h:1?nope=1", "memcached://h:1?cas_attempts=x", "memcached://h:1?cas_attempts=1001",
		"memcached://h:1?max_retries=x", "memcached://h:1?max_retries=3&cas_attempts=3", "memcached://u:pw@h:1", "memcached://h:1;x"} {
		if _, err := OpenURL(bad, backends.Options{}); err == nil {
			t.Fatalf("%s accepted", bad)
		}
	}
}

func benchApply(b *testing.B, keys int) {
	s := openTest(b, Config{})
	defer s.Close()
	conformance.Bench(b, s, keys)
}

func BenchmarkApplyTokenBucket5Keys(b *testing.B)     { benchApply(b, 5) }
func BenchmarkApplyTokenBucket10000Keys(b *testing.B) { benchApply(b, 10_000) }

// BenchmarkHotKey sizes cas_attempts: the share of ops that give up under contention on
// one key, for a few bounds (docs/backends.md has the figures and the command).
func BenchmarkHotKey(b *testing.B) {
	for _, n := range []int{12, 32, backends.DefaultCASAttempts} {
		b.Run(fmt.Sprintf("cas_attempts=%d", n), func(b *testing.B) {
			s := openTest(b, Config{CASAttempts: n})
			defer s.Close()
			conformance.BenchHotKey(b, s)
		})
	}
}

// BenchmarkRoundTrip measures what the store's default timeout covers (docs/backends.md).
func BenchmarkRoundTrip(b *testing.B) {
	s, err := New(Config{Servers: strings.Split(testAddr(b), ",")}, backends.Options{Timeout: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	conformance.BenchRoundTrip(b, s, 1000)
}

// TestKeyPrefix: CACHE_KEY_PREFIX (backends.Options.KeyPrefix) keeps two deployments'
// state apart on one memcached.
func TestKeyPrefix(t *testing.T) {
	servers := strings.Split(testAddr(t), ",")
	conformance.RunKeyPrefix(t, func(t *testing.T, prefix string) backends.Store {
		s, err := New(Config{Servers: servers}, backends.Options{Timeout: 2 * time.Second, KeyPrefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestLocalCacheConformance: memcached behind backends.LocalCache (LOCAL_CACHE_SIZE_IN_BYTES)
// still decides exactly as the pure algorithms, and the cache answered some ops.
func TestLocalCacheConformance(t *testing.T) {
	testAddr(t)
	var mu sync.Mutex
	var caches []*backends.LocalCache
	conformance.Run(t, func(t *testing.T) backends.Store {
		c := backends.NewLocalCache(openTest(t, Config{}), 1<<20)
		mu.Lock()
		caches = append(caches, c)
		mu.Unlock()
		return c
	}, conformance.Options{
		MaxContention: 0.05,
		Reason:        "a compare-and-swap store gives up after cas_attempts lost races",
	})
	var hits uint64
	for _, c := range caches {
		hits += c.Hits()
	}
	if hits == 0 {
		t.Error("the cache answered none of the suite's ops")
	}
}
