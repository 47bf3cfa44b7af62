package engine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// These tests call engine.Check directly (the transports have their own tests in
// internal/rlsv3 and internal/authz): the fold of store results into decisions, with a
// fake clock and the real in-memory store, and faults injected per op around it.

// fakeClock is set by the test; the engine never sleeps on it.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// t0 is 2030-01-01T00:00:00Z, aligned to every unit up to a year.
var t0 = time.Unix(1893456000, 0)

var errFault = fmt.Errorf("%w: injected", backends.ErrUnavailable)

// faultStore is the real memory store with faults injected. Ops for which fail says so
// get errFault and are not decided (the contract's partial failure: Apply returns the
// first op error). With whole set, Apply decides nothing, marks no op and returns whole:
// a store failing as a whole without saying so per op. cancel, when set, is called
// before the ops are decided (the caller giving up during the store round).
type faultStore struct {
	*memory.Store
	fail   func(op *backends.Op) bool
	whole  error
	cancel context.CancelFunc
	rounds int
	ops    int
}

func (f *faultStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	f.rounds++
	f.ops += len(ops)
	if f.cancel != nil {
		f.cancel()
	}
	if f.whole != nil {
		return f.whole
	}
	var first error
	pass := make([]*backends.Op, 0, len(ops))
	for _, op := range ops {
		if f.fail != nil && f.fail(op) {
			op.Err = errFault
			if first == nil {
				first = op.Err
			}
			continue
		}
		pass = append(pass, op)
	}
	if err := f.Store.Apply(ctx, now, pass); err != nil {
		return err
	}
	return first
}

// keyHas fails the ops whose store key contains s.
func keyHas(s string) func(*backends.Op) bool {
	return func(op *backends.Op) bool { return strings.Contains(op.Key, s) }
}

type fixture struct {
	e     *engine.Engine
	store *faultStore
	clock *fakeClock
	m     *metrics.Metrics
	logs  *bytes.Buffer
}

func newFixture(t *testing.T, yaml string, mutate ...func(*engine.Config)) *fixture {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"test.yaml": []byte(yaml)})
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	mem := memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { mem.Close() })
	f := &fixture{store: &faultStore{Store: mem}, clock: &fakeClock{now: t0}, m: metrics.New(nil), logs: new(bytes.Buffer)}
	cfg := engine.Config{
		Store: f.store, StoreName: "memory", Rules: func() *config.Set { return set },
		Clock: f.clock, Metrics: f.m, Logger: slog.New(slog.NewTextHandler(f.logs, nil)),
	}
	for _, m := range mutate {
		m(&cfg)
	}
	if f.e, err = engine.New(cfg); err != nil {
		t.Fatal(err)
	}
	return f
}

// d is a descriptor of hits from k=v pairs.
func d(hits uint64, kv ...string) engine.Descriptor {
	var ents []config.Entry
	for i := 0; i+1 < len(kv); i += 2 {
		ents = append(ents, config.Entry{Key: kv[i], Value: kv[i+1]})
	}
	return engine.Descriptor{Entries: ents, Hits: hits}
}

func (f *fixture) check(t *testing.T, ctx context.Context, descs ...engine.Descriptor) ([]engine.Decision, bool, error) {
	t.Helper()
	decs := make([]engine.Decision, len(descs))
	over, err := f.e.Check(ctx, "d", descs, decs)
	return decs, over, err
}

// mustCheck is check for calls that must not fail.
func (f *fixture) mustCheck(t *testing.T, descs ...engine.Descriptor) ([]engine.Decision, bool) {
	t.Helper()
	decs, over, err := f.check(t, context.Background(), descs...)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return decs, over
}

func (f *fixture) storeErrors() float64 {
	return promtest.ToFloat64(f.m.StoreErrors.WithLabelValues("memory"))
}

const foldConfig = `
domain: d
descriptors:
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: b
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: strict
    failure_mode: deny
    rate_limit: {unit: minute, requests_per_unit: 7}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: two
    rate_limits:
      - {name: burst, unit: second, requests_per_unit: 2}
      - {name: sustained, unit: minute, requests_per_unit: 10}
`

// TestFoldPartialFailure: one op of a round fails, the others are decided; each failed
// op takes its rule's failure mode, and the decided ones keep the store's answer.
func TestFoldPartialFailure(t *testing.T) {
	for _, mode := range []config.FailureMode{config.FailAllow, config.FailDeny, config.FailError} {
		t.Run(string(mode), func(t *testing.T) {
			f := newFixture(t, foldConfig, func(c *engine.Config) { c.FailureMode = mode })
			f.store.fail = keyHas("|a=")
			decs, over, err := f.check(t, context.Background(), d(1, "a", "1"), d(1, "b", "1"))
			if f.store.rounds != 1 || f.store.ops != 2 {
				t.Fatalf("%d rounds, %d ops: want one round of 2", f.store.rounds, f.store.ops)
			}
			if got := f.storeErrors(); got != 1 {
				t.Errorf("store errors %v, want 1 (the failed op only)", got)
			}
			switch mode {
			case config.FailError:
				if !errors.Is(err, engine.ErrStoreUnavailable) || !strings.Contains(err.Error(), "injected") {
					t.Fatalf("err %v, want ErrStoreUnavailable naming the store's error", err)
				}
				if !strings.Contains(f.logs.String(), "answering UNAVAILABLE per failure_mode error") {
					t.Errorf("not logged:\n%s", f.logs)
				}
				return
			case config.FailDeny:
				if err != nil || !over {
					t.Fatalf("over %v, err %v: deny must answer over limit", over, err)
				}
				a := decs[0]
				if a.Code != engine.CodeOverLimit || a.FailedOpen || a.Kind != engine.KindRate || a.Limit == nil || a.Limit.Params.Requests != 3 {
					t.Errorf("a: %+v", a)
				}
				if a.Result.Allowed || a.Result.RetryAfter != 1_000_000 || a.Result.ResetAfter != 1_000_000 || a.Result.Limit != 3 {
					t.Errorf("a's result %+v, want a 1 s wait on a limit of 3", a.Result)
				}
			case config.FailAllow:
				if err != nil || over {
					t.Fatalf("over %v, err %v: allow must answer OK", over, err)
				}
				a := decs[0]
				if a.Code != engine.CodeOK || !a.FailedOpen || a.Limit == nil || !a.Result.Allowed || a.Result.Remaining != 3 || a.Result.Limit != 3 {
					t.Errorf("a: %+v", a)
				}
				if got := promtest.ToFloat64(f.m.Decisions.WithLabelValues("d", a.Rule.Name, metrics.ResultFailOpen)); got != 1 {
					t.Errorf("fail_open decisions %v, want 1", got)
				}
			}
			if !strings.Contains(f.logs.String(), "store failed; applying failure mode") {
				t.Errorf("not logged:\n%s", f.logs)
			}
			// b was decided by the store, whatever happened to a.
			b := decs[1]
			if b.Code != engine.CodeOK || b.FailedOpen || !b.Result.Allowed || b.Result.Remaining != 4 || b.Result.Limit != 5 {
				t.Errorf("b: %+v", b)
			}
		})
	}
}

// TestFoldRuleFailureModeWins: a rule's own failure_mode beats the engine's.
func TestFoldRuleFailureModeWins(t *testing.T) {
	f := newFixture(t, foldConfig, func(c *engine.Config) { c.FailureMode = config.FailError })
	f.store.fail = keyHas("|strict=")
	decs, over, err := f.check(t, context.Background(), d(1, "strict", "x"), d(1, "b", "1"))
	if err != nil || !over || decs[0].Code != engine.CodeOverLimit || decs[1].Code != engine.CodeOK {
		t.Fatalf("over %v err %v decisions %+v", over, err, decs)
	}
}

// TestFoldOneLimitOfSeveralFails: a rule with two limits whose one op fails open keeps
// the other limit's real answer (the failure-mode result only fills an empty report).
func TestFoldOneLimitOfSeveralFails(t *testing.T) {
	f := newFixture(t, foldConfig)
	f.store.fail = keyHas("@fixed_window:60000000")
	for i := range 3 {
		decs, over := f.mustCheck(t, d(1, "two", "x"))
		dec := decs[0]
		if !dec.FailedOpen || dec.Limit == nil || dec.Limit.Name != "burst" {
			t.Fatalf("call %d: %+v", i, dec)
		}
		// The per-second limit (2) is still enforced by the store.
		if wantOver := i == 2; over != wantOver || dec.Result.Remaining != int64(max(1-i, 0)) {
			t.Fatalf("call %d: over %v, remaining %d", i, over, dec.Result.Remaining)
		}
	}
}

// TestFoldWholeFailure: an Apply error that no op carries fails every op of the round,
// whatever their Results hold.
func TestFoldWholeFailure(t *testing.T) {
	for _, mode := range []config.FailureMode{config.FailAllow, config.FailDeny, config.FailError} {
		t.Run(string(mode), func(t *testing.T) {
			f := newFixture(t, foldConfig, func(c *engine.Config) { c.FailureMode = mode })
			f.store.whole = errors.New("connection reset")
			decs, over, err := f.check(t, context.Background(), d(1, "a", "1"), d(1, "b", "1"))
			if got := f.storeErrors(); got != 2 {
				t.Errorf("store errors %v, want 2", got)
			}
			switch mode {
			case config.FailError:
				if !errors.Is(err, engine.ErrStoreUnavailable) || !strings.Contains(err.Error(), "connection reset") {
					t.Fatalf("err %v", err)
				}
			case config.FailDeny:
				if err != nil || !over || decs[0].Code != engine.CodeOverLimit || decs[1].Code != engine.CodeOverLimit {
					t.Fatalf("over %v err %v %+v", over, err, decs)
				}
			case config.FailAllow:
				if err != nil || over || !decs[0].FailedOpen || !decs[1].FailedOpen || decs[1].Result.Remaining != 5 {
					t.Fatalf("over %v err %v %+v", over, err, decs)
				}
			}
		})
	}
}

// zeroStore decides every op but gives the one whose key holds zeroKey the zero Result
// (a valid decision: denied, nothing left), and fails the one holding failKey.
type zeroStore struct {
	*memory.Store
	zeroKey, failKey string
}

func (z *zeroStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	err := z.Store.Apply(ctx, now, ops)
	for _, op := range ops {
		switch {
		case strings.Contains(op.Key, z.zeroKey):
			op.Result = algorithms.Result{}
		case strings.Contains(op.Key, z.failKey):
			op.Err = errFault
			err = op.Err
		}
	}
	return err
}

// TestFoldZeroResultIsADecision: an op without Err was decided, even when Apply returns
// an error (another op's) and its Result is the zero value: it is not taken for a
// failure and answered by the failure mode.
func TestFoldZeroResultIsADecision(t *testing.T) {
	mem := memory.New(memory.Config{SweepInterval: -1})
	defer mem.Close()
	f := newFixture(t, foldConfig, func(c *engine.Config) {
		c.Store = &zeroStore{Store: mem, zeroKey: "|a=", failKey: "|b="}
	})
	decs, over := f.mustCheck(t, d(1, "a", "1"), d(1, "b", "1"))
	if !over || decs[0].Code != engine.CodeOverLimit || decs[0].FailedOpen {
		t.Fatalf("a (zero result): %+v", decs[0])
	}
	if decs[1].Code != engine.CodeOK || !decs[1].FailedOpen {
		t.Fatalf("b (failed): %+v", decs[1])
	}
	if got := f.storeErrors(); got != 1 {
		t.Errorf("store errors %v, want 1", got)
	}
}

// TestFoldCallerGaveUp: when the caller's context ends during the store round, the call
// ends with that error: no failure-mode answer, no fail_open counted.
func TestFoldCallerGaveUp(t *testing.T) {
	f := newFixture(t, foldConfig)
	ctx, cancel := context.WithCancel(context.Background())
	f.store.cancel = cancel
	f.store.whole = context.Canceled
	_, _, err := f.check(t, ctx, d(1, "a", "1"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if got := testCount(f.m, metrics.ResultFailOpen); got != 0 {
		t.Errorf("fail_open counted %v times for a caller that left", got)
	}
}

func testCount(m *metrics.Metrics, result string) float64 {
	mfs, _ := m.Registry.Gather()
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "halt_decisions_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if lp.GetName() == "result" && lp.GetValue() == result {
					sum += mt.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// TestFoldShadowMode: a shadow-mode denial answers OK, marked Shadow, reporting the
// limit that would have denied; it is counted as shadow.
func TestFoldShadowMode(t *testing.T) {
	f := newFixture(t, foldConfig)
	decs, over := f.mustCheck(t, d(1, "shadow", "x"))
	if over || decs[0].Shadow || !decs[0].Result.Allowed {
		t.Fatalf("first call: %+v", decs[0])
	}
	decs, over = f.mustCheck(t, d(1, "shadow", "x"), d(1, "a", "1"))
	s := decs[0]
	if over || s.Code != engine.CodeOK || !s.Shadow || s.Result.Allowed || s.Limit == nil || s.Kind != engine.KindRate {
		t.Fatalf("shadow denial: over %v %+v", over, s)
	}
	if s.Result.RetryAfter <= 0 || s.Result.Remaining != 0 {
		t.Errorf("shadow denial keeps the store's answer: %+v", s.Result)
	}
	if got := promtest.ToFloat64(f.m.Decisions.WithLabelValues("d", s.Rule.Name, metrics.ResultShadow)); got != 1 {
		t.Errorf("shadow decisions %v, want 1", got)
	}
}

const quotaConfig = `
domain: d
time_zone: UTC
penalties:
  abuse: {threshold: 2, severity: 1, ladder: [1m, 5m], decay: 1h}
descriptors:
  - key: multi
    rate_limit: {unit: second, requests_per_unit: 100}
    quotas:
      - {name: daily, period: daily, requests: 3}
      - {name: monthly, period: monthly, requests: 5}
  - key: single
    rate_limit: {unit: second, requests_per_unit: 100}
    quota: {period: monthly, requests: 2}
  - key: strictq
    failure_mode: deny
    rate_limit: {unit: second, requests_per_unit: 100}
    quotas:
      - {name: daily, period: daily, requests: 3}
      - {name: monthly, period: monthly, requests: 5}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 1}
    penalty: abuse
`

// TestFoldQuotaPrecheck: a descriptor with several quotas is refused by the first that
// lacks room, before any is charged: the monthly quota is not used up by requests the
// daily one refuses.
func TestFoldQuotaPrecheck(t *testing.T) {
	f := newFixture(t, quotaConfig)
	for i := range 3 {
		if _, over := f.mustCheck(t, d(1, "multi", "c")); over {
			t.Fatalf("call %d refused", i)
		}
	}
	before := f.store.rounds
	decs, over := f.mustCheck(t, d(1, "multi", "c"))
	q := decs[0]
	if !over || q.Kind != engine.KindQuota || q.Limit == nil || q.Limit.Name != "quota:daily" || q.Result.Allowed {
		t.Fatalf("4th call: over %v %+v", over, q)
	}
	// The wait is until the day ends, and the refusal took no charging round.
	if want := int64(24 * time.Hour / time.Microsecond); q.Result.RetryAfter != want || q.Result.ResetAfter != want {
		t.Errorf("retry after %d, reset after %d, want %d", q.Result.RetryAfter, q.Result.ResetAfter, want)
	}
	if got := f.store.rounds - before; got != 2 {
		t.Errorf("%d store rounds, want 2 (rate limit, quota reads)", got)
	}
	// Next day: 2 of the monthly 5 left (the refused call charged nothing).
	f.clock.Add(24 * time.Hour)
	for i := range 2 {
		if _, over := f.mustCheck(t, d(1, "multi", "c")); over {
			t.Fatalf("day 2 call %d refused", i)
		}
	}
	decs, over = f.mustCheck(t, d(1, "multi", "c"))
	if !over || decs[0].Limit.Name != "quota:monthly" {
		t.Fatalf("6th call of the month: over %v %+v", over, decs[0])
	}
	// A request costing more than a whole quota can never pass: RetryAfter -1.
	decs, over = f.mustCheck(t, d(9, "multi", "other"))
	if !over || decs[0].Result.RetryAfter != -1 || decs[0].Kind != engine.KindQuota {
		t.Fatalf("cost 9 against quotas of 3 and 5: over %v %+v", over, decs[0])
	}
}

// TestFoldQuotaSingle: one quota needs no read round; the Calendar decision is
// all-or-nothing.
func TestFoldQuotaSingle(t *testing.T) {
	f := newFixture(t, quotaConfig)
	f.mustCheck(t, d(1, "single", "c"))
	before := f.store.rounds
	if _, over := f.mustCheck(t, d(1, "single", "c")); over {
		t.Fatal("2nd call refused")
	}
	if got := f.store.rounds - before; got != 2 {
		t.Errorf("%d store rounds, want 2 (rate limit, quota charge)", got)
	}
	decs, over := f.mustCheck(t, d(1, "single", "c"))
	if !over || decs[0].Kind != engine.KindQuota {
		t.Fatalf("3rd call: %+v", decs[0])
	}
}

// TestFoldQuotaReadFails: a quota read that fails takes the failure mode like any op.
func TestFoldQuotaReadFails(t *testing.T) {
	quotaRead := func(op *backends.Op) bool { return strings.Contains(op.Key, "@quota:") && op.Cost == 0 }
	f := newFixture(t, quotaConfig)
	f.store.fail = quotaRead
	decs, over := f.mustCheck(t, d(1, "multi", "c"), d(1, "strictq", "c"))
	if !over || decs[1].Code != engine.CodeOverLimit || decs[1].Kind != engine.KindQuota || decs[1].FailedOpen {
		t.Fatalf("deny rule: %+v", decs[1])
	}
	if !decs[0].FailedOpen {
		t.Fatalf("allow rule: %+v", decs[0])
	}
	if got := f.storeErrors(); got != 4 {
		t.Errorf("store errors %v, want 4 (two reads per descriptor)", got)
	}

	f = newFixture(t, quotaConfig, func(c *engine.Config) { c.FailureMode = config.FailError })
	f.store.fail = quotaRead
	if _, _, err := f.check(t, context.Background(), d(1, "multi", "c")); !errors.Is(err, engine.ErrStoreUnavailable) {
		t.Fatalf("failure_mode error: %v", err)
	}
	if !strings.Contains(f.logs.String(), "answering UNAVAILABLE") {
		t.Errorf("not logged:\n%s", f.logs)
	}
}

// TestFoldViolations: a descriptor that ended over limit records a violation; the
// threshold starts a lockout that refuses the identity before its rate limit is read.
// A violation the store fails to record is counted and logged but changes no answer.
func TestFoldViolations(t *testing.T) {
	f := newFixture(t, quotaConfig)
	f.mustCheck(t, d(1, "user", "u"))
	for i := range 2 {
		decs, over := f.mustCheck(t, d(1, "user", "u"))
		if !over || decs[0].Kind != engine.KindRate {
			t.Fatalf("violation %d: %+v", i, decs[0])
		}
	}
	if got := promtest.ToFloat64(f.m.PenaltyLockouts.WithLabelValues("d", "abuse")); got != 1 {
		t.Fatalf("lockouts %v, want 1", got)
	}
	// Within the lockout, the penalty check refuses before the rate limit is read.
	f.clock.Add(30 * time.Second)
	before := f.store.rounds
	decs, over := f.mustCheck(t, d(1, "user", "u"))
	if got := f.store.rounds - before; got != 1 {
		t.Errorf("%d store rounds for a locked-out identity, want 1", got)
	}
	if !over || decs[0].Kind != engine.KindPenalty || decs[0].Limit.Name != "penalty:abuse" {
		t.Fatalf("locked out: %+v", decs[0])
	}

	g := newFixture(t, quotaConfig)
	g.store.fail = func(op *backends.Op) bool { return strings.Contains(op.Key, "@penalty:") && op.Cost > 0 }
	g.mustCheck(t, d(1, "user", "v"))
	decs, over = g.mustCheck(t, d(1, "user", "v"))
	if !over || decs[0].Kind != engine.KindRate || decs[0].FailedOpen {
		t.Fatalf("an unrecorded violation changed the answer: %+v", decs[0])
	}
	if got := g.storeErrors(); got != 1 {
		t.Errorf("store errors %v, want 1", got)
	}
	if got := promtest.ToFloat64(g.m.PenaltyViolations.WithLabelValues("d", "abuse")); got != 0 {
		t.Errorf("violations %v counted although none was recorded", got)
	}
	if !strings.Contains(g.logs.String(), "recording penalty violations failed") {
		t.Errorf("not logged:\n%s", g.logs)
	}
}

// TestFoldPenaltyCheckFails: the lockout check is a round like the others: when it
// fails, the failure mode answers (deny refuses without reading the rate limit).
func TestFoldPenaltyCheckFails(t *testing.T) {
	f := newFixture(t, quotaConfig, func(c *engine.Config) { c.FailureMode = config.FailDeny })
	f.store.fail = func(op *backends.Op) bool { return strings.Contains(op.Key, "@penalty:") && op.Cost == 0 }
	decs, over := f.mustCheck(t, d(1, "user", "u"))
	if !over || decs[0].Kind != engine.KindPenalty || decs[0].Limit.Name != "penalty:abuse" {
		t.Fatalf("%+v", decs[0])
	}
}

// TestDiscardMetricsByDefault: an engine built without metrics counts into its own
// registry, so nothing on the request path checks for nil.
func TestDiscardMetricsByDefault(t *testing.T) {
	f := newFixture(t, foldConfig, func(c *engine.Config) { c.Metrics = nil })
	if f.e.Metrics() == nil || f.e.Metrics() == f.m {
		t.Fatal("no default metrics")
	}
	f.store.fail = keyHas("|a=")
	f.mustCheck(t, d(1, "a", "1"), d(1, "b", "1"))
	if got := promtest.ToFloat64(f.e.Metrics().StoreErrors.WithLabelValues("memory")); got != 1 {
		t.Fatalf("store errors %v", got)
	}
}
