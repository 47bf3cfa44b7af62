package observe

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/lograte"
)

// Default sample rates: 1% of decisions, 10% of over-limit ones. Refusals are rarer and
// are what an operator looks for, but a flood of them must not flood the logs either.
const (
	DefaultDecisionSample  = 0.01
	DefaultOverLimitSample = 0.1
)

// MaxDecisionLines caps the decision lines written per second, whatever the sample rates:
// under an attack, or a store outage with failure_mode deny, 10 % of over-limit decisions
// at 50,000 calls/s would still be 5,000 lines a second. The next line written says how
// many sampled lines the cap held back.
const MaxDecisionLines = 100

// Log writes sampled structured log lines of decisions and every violation that started
// a lockout. Sampling is a deterministic counter per stream: a rate of 0.01 logs exactly
// every hundredth decision, cheap and with no randomness to explain in a test.
type Log struct {
	log                 *slog.Logger
	rate, overRate      float64
	decisions, overLims atomic.Uint64
	cap                 *lograte.Limiter
	now                 func() time.Time
}

// NewLog returns a log observer. rate applies to admitted decisions, overLimitRate to
// over-limit ones; both must be in [0, 1].
func NewLog(log *slog.Logger, rate, overLimitRate float64) (*Log, error) {
	for _, r := range []float64{rate, overLimitRate} {
		if math.IsNaN(r) || r < 0 || r > 1 {
			return nil, fmt.Errorf("observe: sample rate %v is not between 0 and 1", r)
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Log{log: log, rate: rate, overRate: overLimitRate, cap: lograte.NewN(MaxDecisionLines, time.Second), now: time.Now}, nil
}

// sample reports whether the n-th event of a stream with rate r is logged: it is when
// floor(n*r) steps, which spreads exactly r of them evenly.
func sample(c *atomic.Uint64, r float64) bool {
	if r <= 0 {
		return false
	}
	if r >= 1 {
		return true
	}
	n := c.Add(1)
	return math.Floor(float64(n)*r) != math.Floor(float64(n-1)*r)
}

// OnDecision logs a sample of decisions.
func (l *Log) OnDecision(ctx context.Context, ev *engine.DecisionEvent) {
	d := ev.Decision
	if d.Kind == engine.KindNone && d.Rule == nil && d.Limit == nil {
		return // nothing matched: nothing was decided
	}
	over := d.Code == engine.CodeOverLimit
	if over {
		if !sample(&l.overLims, l.overRate) {
			return
		}
	} else if !sample(&l.decisions, l.rate) {
		return
	}
	ok, held := l.cap.Allow(l.now())
	if !ok {
		return
	}
	attrs := []slog.Attr{
		slog.String("domain", ev.Domain),
		slog.String("identity", IdentityHash(ev.Entries)),
		slog.String("result", Result(d)),
		slog.String("kind", d.Kind.String()),
	}
	if r := ruleName(d); r != "" {
		attrs = append(attrs, slog.String("rule", r))
	}
	if p := planName(d); p != "" {
		attrs = append(attrs, slog.String("plan", p))
	}
	if d.Kind == engine.KindExempt {
		attrs = append(attrs, slog.String("exempt", d.Exempt))
	}
	if d.Limit != nil {
		attrs = append(attrs,
			slog.String("limit", limitName(d)),
			slog.Int64("remaining", d.Result.Remaining),
			slog.Duration("reset_after", time.Duration(d.Result.ResetAfter)*time.Microsecond),
		)
		if over && d.Result.RetryAfter > 0 {
			attrs = append(attrs, slog.Duration("retry_after", time.Duration(d.Result.RetryAfter)*time.Microsecond))
		}
	}
	if held > 0 {
		attrs = append(attrs, slog.Int64("similar_suppressed", held))
	}
	l.log.LogAttrs(ctx, slog.LevelInfo, "rate-limit decision", attrs...)
}

// OnViolation logs every lockout started (they are rare and always worth a line); plain
// violations are only counted by the engine's metrics.
func (l *Log) OnViolation(ctx context.Context, ev *engine.ViolationEvent) {
	if !ev.LockedOut {
		return
	}
	attrs := []slog.Attr{
		slog.String("domain", ev.Domain),
		slog.String("penalty", ev.Penalty),
		slog.Int64("severity", ev.Severity),
		slog.Duration("lockout", ev.Lockout),
	}
	if ev.Rule != nil {
		attrs = append(attrs, slog.String("rule", ev.Rule.Name))
	}
	l.log.LogAttrs(ctx, slog.LevelWarn, "penalty lockout started", attrs...)
}
