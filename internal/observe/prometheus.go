package observe

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/halt-envoy/halt-envoy/internal/engine"
)

// DefaultMaxPenalties bounds the lockouts Prometheus remembers. A flood of lockouts
// beyond it (an attack from a botnet) makes the gauge saturate instead of the process
// grow without bound.
const DefaultMaxPenalties = 100_000

// Prometheus exports halt_penalty_active: the lockouts in force now. The engine's
// metrics already count lockouts started (halt_penalty_lockouts_total); a counter cannot
// say how many are still running, which is what an operator watching an attack wants.
//
// The engine's ViolationEvent does not name the identity it locked out, so lockouts are
// remembered one per event, not per identity: exact, since an identity cannot be locked
// twice at once, except that a lockout lifted through the admin API stays counted until
// it would have ended.
type Prometheus struct {
	mu    sync.Mutex
	until map[string]time.Time // lockout -> end
	seq   uint64
	max   int
	now   func() time.Time
	gauge prometheus.GaugeFunc
}

// PrometheusOption tunes NewPrometheus.
type PrometheusOption func(*Prometheus)

// WithMaxPenalties replaces DefaultMaxPenalties.
func WithMaxPenalties(n int) PrometheusOption { return func(p *Prometheus) { p.max = n } }

// WithNow replaces the wall clock (tests; it must be the engine's clock).
func WithNow(now func() time.Time) PrometheusOption { return func(p *Prometheus) { p.now = now } }

// NewPrometheus registers halt_penalty_active on reg (the halt registry,
// metrics.Metrics.Registry) and returns the observer that feeds it.
func NewPrometheus(reg prometheus.Registerer, opts ...PrometheusOption) (*Prometheus, error) {
	p := &Prometheus{until: make(map[string]time.Time), max: DefaultMaxPenalties, now: time.Now}
	for _, o := range opts {
		o(p)
	}
	if p.max <= 0 {
		p.max = DefaultMaxPenalties
	}
	p.gauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "halt_penalty_active",
		Help: "Penalty lockouts in force now (computed at scrape time).",
	}, func() float64 { return float64(p.Active()) })
	if err := reg.Register(p.gauge); err != nil {
		return nil, err
	}
	return p, nil
}

// Active counts the lockouts in force now, forgetting those that ended.
func (p *Prometheus) Active() int {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sweep(now)
	return len(p.until)
}

// sweep drops ended lockouts; p.mu is held.
func (p *Prometheus) sweep(now time.Time) {
	for k, u := range p.until {
		if !u.After(now) {
			delete(p.until, k)
		}
	}
}

// OnDecision does nothing: lockouts are learnt from violations.
func (p *Prometheus) OnDecision(context.Context, *engine.DecisionEvent) {}

// OnViolation remembers a lockout that just started.
func (p *Prometheus) OnViolation(_ context.Context, ev *engine.ViolationEvent) {
	if !ev.LockedOut || ev.Lockout <= 0 {
		return
	}
	now := p.now()
	end := now.Add(ev.Lockout)
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.until) >= p.max {
		p.sweep(now)
		if len(p.until) >= p.max {
			// Still full of live lockouts: the one ending soonest makes room, so the gauge
			// stays at its bound rather than dropping the newest.
			var oldest string
			var first time.Time
			for k, u := range p.until {
				if oldest == "" || u.Before(first) {
					oldest, first = k, u
				}
			}
			delete(p.until, oldest)
		}
	}
	p.seq++
	p.until[ev.Domain+"\x00"+ev.Penalty+"\x00"+strconv.FormatUint(p.seq, 10)] = end
}
