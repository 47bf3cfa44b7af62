// Package control evaluates the adaptive rules' signals against Prometheus and keeps
// the factor in force of each (engine.Factors). Each evaluation is a range query over
// the rule's window of aligned instants folded by adaptive.Spec.Fold, so that replicas
// reading the same Prometheus agree on the factor without sharing any state.
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/halt-envoy/halt-envoy/internal/adaptive"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
)

// DefaultLag is how far behind now the last instant judged is: the signal's last
// scrape and rule evaluation must have landed in Prometheus for every replica alike.
const DefaultLag = 30 * time.Second

// Options configure a Controller.
type Options struct {
	// Prometheus is the server's base URL (http://prometheus:9090).
	Prometheus string
	// Timeout bounds one query; default 10 s.
	Timeout time.Duration
	// Lag: DefaultLag when zero.
	Lag     time.Duration
	Logger  *slog.Logger
	Metrics *metrics.Metrics
}

// Controller keeps the factor in force of every adaptive rule. It is safe for
// concurrent use: the engine reads factors while Step updates them.
type Controller struct {
	api     promv1.API
	timeout time.Duration
	lag     time.Duration
	log     *slog.Logger
	m       *metrics.Metrics

	mu    sync.RWMutex
	rules map[string]*state
}

// state is one rule's: its factor and the last instant judged.
type state struct {
	factor float64
	end    time.Time
	// spec is the block the factor was computed under: a changed block starts over.
	spec adaptive.Spec
}

// New returns a controller querying o.Prometheus.
func New(o Options) (*Controller, error) {
	if o.Prometheus == "" {
		return nil, errors.New("adaptive: no Prometheus address (--adaptive-prometheus)")
	}
	c, err := promapi.NewClient(promapi.Config{Address: o.Prometheus})
	if err != nil {
		return nil, fmt.Errorf("adaptive: Prometheus address %q: %w", o.Prometheus, err)
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Lag <= 0 {
		o.Lag = DefaultLag
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = metrics.Discard()
	}
	return &Controller{api: promv1.NewAPI(c), timeout: o.Timeout, lag: o.Lag, log: o.Logger, m: o.Metrics, rules: map[string]*state{}}, nil
}

func ruleKey(r *config.Rule) string { return r.Domain + "\x00" + r.Name + "\x00" + r.Path }

// Factor is the factor in force of r: its last evaluation's, or Max before the first
// (the fold starts at Max, and a replica that just started must not refuse what the
// others admit while it asks).
func (c *Controller) Factor(r *config.Rule) float64 {
	c.mu.RLock()
	s := c.rules[ruleKey(r)]
	c.mu.RUnlock()
	if s == nil || s.spec != *r.Adaptive {
		return r.Adaptive.Max
	}
	return s.factor
}

// Step evaluates every rule of rules whose next aligned instant has come by now. A
// query that fails, or answers no series or several, leaves the factor as it was: it
// is logged and counted (halt_adaptive_signal_errors_total), never an unbounded limit.
func (c *Controller) Step(ctx context.Context, now time.Time, rules []*config.Rule) {
	for _, r := range rules {
		if r.Adaptive == nil {
			continue
		}
		c.step(ctx, now, r)
	}
}

func (c *Controller) step(ctx context.Context, now time.Time, r *config.Rule) {
	spec := *r.Adaptive
	start, end := spec.Window(now, c.lag)
	k := ruleKey(r)
	c.mu.RLock()
	s := c.rules[k]
	c.mu.RUnlock()
	if s != nil && s.spec == spec && !end.After(s.end) {
		return
	}
	from := spec.Max
	if s != nil && s.spec == spec {
		from = s.factor
	}
	points, err := c.signal(ctx, &spec, start, end)
	if err != nil {
		reason := "query"
		var e *emptyError
		if errors.As(err, &e) {
			reason = e.reason
		}
		c.m.AdaptiveSignalErrors.WithLabelValues(r.Domain, r.Name, reason).Inc()
		c.log.Warn("adaptive: the signal says nothing; the factor holds", "domain", r.Domain, "rule", r.Name, "factor", from, "reason", reason, "error", err)
		c.set(k, &state{factor: from, end: end, spec: spec}, r)
		return
	}
	f, changes := spec.Fold(points)
	if f != from {
		attrs := []any{"domain", r.Domain, "rule", r.Name, "from", from, "to", f, "at", end}
		if n := len(changes); n > 0 {
			last := changes[n-1]
			attrs = append(attrs, "reason", last.Reason, "signal", last.Value, "signal_at", last.At, "bad_above", spec.BadAbove, "good_below", spec.GoodBelow)
		}
		c.log.Info("adaptive: the factor in force changed", attrs...)
	}
	c.set(k, &state{factor: f, end: end, spec: spec}, r)
}

func (c *Controller) set(k string, s *state, r *config.Rule) {
	c.mu.Lock()
	c.rules[k] = s
	c.mu.Unlock()
	c.m.AdaptiveFactor.WithLabelValues(r.Domain, r.Name).Set(s.factor)
}

// emptyError is a query that answered, but not one series.
type emptyError struct{ reason, msg string }

func (e *emptyError) Error() string { return e.msg }

// signal reads the signal at every aligned instant of [start, end]: one point per
// instant, OK false where the series has no sample.
func (c *Controller) signal(ctx context.Context, spec *adaptive.Spec, start, end time.Time) ([]adaptive.Point, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	v, _, _, err := c.api.QueryRange(ctx, spec.Query, promv1.Range{Start: start, End: end, Step: spec.Interval})
	if err != nil {
		return nil, err
	}
	m, ok := v.(model.Matrix)
	if !ok {
		return nil, &emptyError{"type", fmt.Sprintf("the query answers a %s, not a range of one series", v.Type())}
	}
	switch len(m) {
	case 0:
		return nil, &emptyError{"empty", "the query answers no series"}
	case 1:
	default:
		return nil, &emptyError{"series", fmt.Sprintf("the query answers %d series; want one (aggregate it: max(...), sum(...))", len(m))}
	}
	byTime := make(map[int64]float64, len(m[0].Values))
	for _, p := range m[0].Values {
		byTime[p.Timestamp.Time().Unix()] = float64(p.Value)
	}
	n := spec.Steps()
	points := make([]adaptive.Point, 0, n)
	for t := start; !t.After(end); t = t.Add(spec.Interval) {
		v, ok := byTime[t.Unix()]
		points = append(points, adaptive.Point{At: t, Value: v, OK: ok && !math.IsNaN(v) && !math.IsInf(v, 0)})
	}
	return points, nil
}

// Run evaluates rules() at every tick until ctx ends, on the system clock (the
// evaluation itself takes its instant as an argument: Step).
func (c *Controller) Run(ctx context.Context, rules func() []*config.Rule, tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		c.Step(ctx, time.Now(), rules())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
