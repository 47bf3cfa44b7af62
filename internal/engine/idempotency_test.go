package engine_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

const idemConfig = `
domain: d
descriptors:
  - key: pay
    idempotency_ttl: 1h
    rate_limit: {unit: minute, requests_per_unit: 3, algorithm: token_bucket}
  - key: plain
    rate_limit: {unit: minute, requests_per_unit: 3}
`

func keyed(k string, x engine.Descriptor) engine.Descriptor {
	x.IdempotencyKey = k
	return x
}

// TestIdempotentRequests: a request carrying an idempotency key is decided once; a repeat
// gets the first decision and is not charged; the key sent with another cost or request
// is a conflict, charged nothing, and for other counters is theirs; a refusal is replayed
// until its wait ends; the record ends with idempotency_ttl; a rule without
// idempotency_ttl ignores keys (issue 17 item 5).
func TestIdempotentRequests(t *testing.T) {
	f := newFixture(t, idemConfig)
	left := func(kv ...string) int64 {
		t.Helper()
		return f.one(t, d(0, kv...)).Result.Remaining
	}
	first := f.one(t, keyed("k1", d(1, "pay", "u")))
	if first.Code != engine.CodeOK || first.Result.Remaining != 2 || first.Idempotency != engine.IdemNone {
		t.Fatalf("first: %+v", first)
	}
	for i := range 3 {
		again := f.one(t, keyed("k1", d(1, "pay", "u")))
		if again.Code != engine.CodeOK || again.Idempotency != engine.IdemReplayed || again.Result.Remaining != 2 || again.Limit == nil || again.Result.Limit != 3 {
			t.Fatalf("repeat %d: %+v", i, again)
		}
	}
	if n := left("pay", "u"); n != 2 {
		t.Fatalf("%d left after a request and 3 repeats, want 2", n)
	}
	if first, replayed := promtest.ToFloat64(f.m.Idempotency.WithLabelValues("first")), promtest.ToFloat64(f.m.Idempotency.WithLabelValues("replayed")); first != 1 || replayed != 3 {
		t.Fatalf("halt_idempotency_total first %v replayed %v, want 1 and 3", first, replayed)
	}
	// The key with another cost, or for another request (IdempotencyScope): a conflict,
	// charged nothing.
	other := keyed("k1", d(1, "pay", "u"))
	other.IdempotencyScope = engine.IdempotencyScope("GET", "/v1/items/1", nil)
	for _, x := range []engine.Descriptor{keyed("k1", d(2, "pay", "u")), other} {
		if dec := f.one(t, x); dec.Code != engine.CodeOverLimit || dec.Idempotency != engine.IdemConflict {
			t.Fatalf("conflict %v %x: %+v", x.Entries, x.IdempotencyScope, dec)
		}
	}
	if left("pay", "u") != 2 {
		t.Fatal("a conflict was charged")
	}
	// The key sent for other counters (another customer) is theirs: decided on its own,
	// never a conflict with (nor a replay of) the first customer's request.
	if dec := f.one(t, keyed("k1", d(1, "pay", "v"))); dec.Code != engine.CodeOK || dec.Idempotency != engine.IdemNone || dec.Result.Remaining != 2 {
		t.Fatalf("k1 for other counters: %+v", dec)
	}
	if left("pay", "u") != 2 || left("pay", "v") != 2 {
		t.Fatal("k1 for other counters was not charged once to them")
	}
	// A refusal is replayed until its wait ends, then the key decides afresh (the client
	// was told it may retry then).
	f.one(t, keyed("k2", d(2, "pay", "u")))
	refused := f.one(t, keyed("k3", d(1, "pay", "u")))
	if refused.Code != engine.CodeOverLimit || refused.Result.RetryAfter != (20*time.Second).Microseconds() {
		t.Fatalf("k3 with nothing left: %+v", refused)
	}
	f.clock.Add(19 * time.Second)
	again := f.one(t, keyed("k3", d(1, "pay", "u")))
	if again.Code != engine.CodeOverLimit || again.Idempotency != engine.IdemReplayed || again.Result.Remaining != 0 || again.Result.RetryAfter != time.Second.Microseconds() {
		t.Fatalf("repeat of a refusal within its wait: %+v", again)
	}
	f.clock.Add(time.Second) // one token back: the wait is over
	again = f.one(t, keyed("k3", d(1, "pay", "u")))
	if again.Code != engine.CodeOK || again.Idempotency != engine.IdemNone || again.Result.Remaining != 0 {
		t.Fatalf("k3 after the refusal's wait: %+v", again)
	}
	if dec := f.one(t, keyed("k3", d(1, "pay", "u"))); dec.Code != engine.CodeOK || dec.Idempotency != engine.IdemReplayed {
		t.Fatalf("k3's admission repeated: %+v", dec)
	}
	if n := left("pay", "u"); n != 0 {
		t.Fatalf("%d left, want the refilled token taken by k3 once", n)
	}
	// The reserved entry carries the key as the field does.
	viaEntry := d(2, "pay", "u", engine.IdempotencyEntry, "k2")
	if dec := f.one(t, viaEntry); dec.Idempotency != engine.IdemReplayed || dec.Code != engine.CodeOK {
		t.Fatalf("k2 through the reserved entry: %+v", dec)
	}
	// The record ends with idempotency_ttl: the key then starts a new one.
	f.clock.Add(time.Hour)
	if dec := f.one(t, keyed("k1", d(1, "pay", "u"))); dec.Idempotency != engine.IdemNone || dec.Result.Remaining != 2 {
		t.Fatalf("k1 an hour later: %+v", dec)
	}
	// Envoy's token budget: the request-time check (0 hits) and the after-response
	// charge carry the request's key; each kind of call is decided once on its own.
	if dec := f.one(t, keyed("t", d(0, "pay", "w"))); dec.Code != engine.CodeOK || dec.Result.Remaining != 3 {
		t.Fatalf("check with a key: %+v", dec)
	}
	for i := range 2 {
		dec := f.one(t, keyed("t", d(2, "pay", "w")))
		if dec.Code != engine.CodeOK || dec.Result.Remaining != 1 || dec.Idempotency != []engine.Idempotency{engine.IdemNone, engine.IdemReplayed}[i] {
			t.Fatalf("after-response charge %d with the request's key: %+v", i, dec)
		}
	}
	if n := left("pay", "w"); n != 1 {
		t.Fatalf("%d left after a charge of 2 and its repeat, want 1", n)
	}
	// A rule without idempotency_ttl ignores the key: both calls are charged.
	f.one(t, keyed("p", d(1, "plain", "u")))
	if dec := f.one(t, keyed("p", d(1, "plain", "u"))); dec.Idempotency != engine.IdemNone || dec.Result.Remaining != 1 {
		t.Fatalf("plain: %+v", dec)
	}
}

// TestIdempotencyBadKeys: a key longer than MaxIdempotencyKey is refused by name, as a
// field or as the reserved entry; a 1 MB key never reaches the store.
func TestIdempotencyBadKeys(t *testing.T) {
	f := newFixture(t, idemConfig)
	long := strings.Repeat("k", engine.MaxIdempotencyKey+1)
	huge := strings.Repeat("k", 1<<20)
	for _, x := range []engine.Descriptor{keyed(long, d(1, "pay", "u")), keyed(huge, d(1, "pay", "u")), d(1, "pay", "u", engine.IdempotencyEntry, long)} {
		_, _, err := f.check(t, context.Background(), x)
		if !errors.Is(err, engine.ErrInvalid) || !strings.Contains(err.Error(), "the limit is 255") {
			t.Errorf("key of %d bytes: %v", max(len(x.IdempotencyKey), len(x.Entries[len(x.Entries)-1].Value)), err)
		}
	}
	if f.store.ops != 0 {
		t.Fatalf("%d ops reached the store", f.store.ops)
	}
	// The key at the bound is kept.
	if dec := f.one(t, keyed(long[:engine.MaxIdempotencyKey], d(1, "pay", "u"))); dec.Code != engine.CodeOK {
		t.Fatalf("key of 255 bytes: %+v", dec)
	}
}

// TestIdempotencyStoreFailure: a claim the store cannot answer leaves the request decided
// as if it had no key; a call that fails after its claim releases it, so its retry is
// decided instead of answered in progress.
func TestIdempotencyStoreFailure(t *testing.T) {
	f := newFixture(t, idemConfig)
	f.store.fail = keyHas("@idem:")
	if dec := f.one(t, keyed("k", d(1, "pay", "u"))); dec.Code != engine.CodeOK || dec.Result.Remaining != 2 {
		t.Fatalf("claim failed: %+v", dec)
	}
	f.store.fail = nil
	g := newFixture(t, idemConfig, func(c *engine.Config) { c.FailureMode = config.FailError })
	g.store.fail = keyHas("pay=")
	if _, _, err := g.check(t, context.Background(), keyed("k", d(1, "pay", "u"))); err == nil {
		t.Fatal("a failed rate limit under failure mode error: no error")
	}
	g.store.fail = nil
	if dec := g.one(t, keyed("k", d(1, "pay", "u"))); dec.Idempotency != engine.IdemNone || dec.Code != engine.CodeOK {
		t.Fatalf("retry after a failed call: %+v, want decided", dec)
	}
}

// TestIdempotencyConcurrent: 30 clients send the same request with the same key at once;
// it is charged exactly once, and every answer is the first decision or "in progress".
func TestIdempotencyConcurrent(t *testing.T) {
	set, err := config.Parse(map[string][]byte{"i.yaml": []byte(idemConfig)})
	if err != nil {
		t.Fatal(err)
	}
	var st backends.Store = memory.New(memory.Config{SweepInterval: -1})
	defer st.Close()
	e, err := engine.New(engine.Config{Store: st, StoreName: "memory", Rules: func() *config.Set { return set }, Clock: &fakeClock{now: t0}, Metrics: metrics.New(nil)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[engine.Idempotency]int{}
	for range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for try := 0; try < 1_000_000; try++ {
				decs := make([]engine.Decision, 1)
				if _, err := e.Check(context.Background(), "d", []engine.Descriptor{keyed("same", d(1, "pay", "u"))}, decs); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen[decs[0].Idempotency]++
				mu.Unlock()
				if decs[0].Idempotency != engine.IdemInProgress {
					if decs[0].Code != engine.CodeOK || decs[0].Result.Remaining != 2 {
						t.Errorf("answer %+v, want the first decision", decs[0])
					}
					return
				}
				runtime.Gosched() // the first request is being decided: let it finish
			}
			t.Error("still in progress after a million tries")
		}()
	}
	wg.Wait()
	decs := make([]engine.Decision, 1)
	if _, err := e.Check(context.Background(), "d", []engine.Descriptor{d(0, "pay", "u")}, decs); err != nil || decs[0].Result.Remaining != 2 {
		t.Fatalf("after 30 clients: %+v %v, want charged once (2 left)", decs[0], err)
	}
	if seen[engine.IdemNone] != 1 || seen[engine.IdemConflict] != 0 {
		t.Fatalf("answers %v: want one first decision and no conflict", seen)
	}
}
