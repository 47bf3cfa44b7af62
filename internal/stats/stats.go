// Package stats counts the reference service's stats (envoyproxy/ratelimit): per rule,
// in hits (hits_addend summed, not calls), total_hits, over_limit, near_limit,
// within_limit and shadow_mode, under the reference's key of the rule
// (DOMAIN.key_value.subkey), with value_to_metric and detailed_metric putting request
// values in the key as there. It is an engine.Observer.
//
// The counters go to halt's Prometheus registry under halt's names
// (halt_rule_*_total{domain,key}) and, when an output is configured, into a gostats
// store under the reference's exact stat names (ratelimit.service.rate_limit.DOMAIN.KEY.
// total_hits, ...), which a sink flushes to statsd, DogStatsD or the reference's
// statsd-mapped Prometheus endpoint (sinks.go). Keys that carry request values are
// bounded by metrics.KeyCap: past the cap they are counted under KEY.__overflow__.
package stats

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"

	gostats "github.com/lyft/gostats"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
)

// DefaultNearLimitRatio is the reference's NEAR_LIMIT_RATIO default.
const DefaultNearLimitRatio = 0.8

// maxRuleCache bounds the rule -> counters cache. Rules are immutable per config Set, so
// every reload brings new pointers; past this many the cache starts over (the counters
// themselves are kept by key).
const maxRuleCache = 1 << 14

// Options configures Stats.
type Options struct {
	// Metrics receives the halt_rule_* counters; its RuleKeys cap bounds request-valued
	// keys. Nil means metrics.Discard().
	Metrics *metrics.Metrics
	// NearLimitRatio is the share of a limit (0..1) past which admitted hits count as
	// near_limit: the reference's NEAR_LIMIT_RATIO, DefaultNearLimitRatio by default.
	NearLimitRatio float64
	// Store, when set, receives the same counters under the reference's stat names; a
	// sink flushes it (Run).
	Store gostats.Store
	// ExtraTags are added to every reference stat (the reference's EXTRA_TAGS).
	ExtraTags map[string]string
}

// Stats is the observer that counts the reference's per-rule stats. It is safe for
// concurrent use.
type Stats struct {
	m     *metrics.Metrics
	ratio float32
	rl    gostats.Scope // ratelimit.service.rate_limit, nil without a store

	rules     sync.Map // *config.Rule -> *ruleInfo
	ruleCount atomic.Int64

	mu   sync.RWMutex
	keys map[string]*counters // full key (DOMAIN.KEY) -> counters
}

// ruleInfo is what a rule's stats need, computed once per rule.
type ruleInfo struct {
	// static is the rule's key (DOMAIN.KEY) when no request value goes into it.
	static string
	// dynamic: detailed_metric or value_to_metric put request values in the key.
	dynamic bool
	c       *counters // the counters of static when !dynamic
}

// The reference's five stats of a key, in metrics.RuleCounters' order.
const (
	totalHits   = metrics.RuleHits
	overLimit   = metrics.RuleOverLimit
	nearLimit   = metrics.RuleNearLimit
	withinLimit = metrics.RuleWithinLimit
	shadowMode  = metrics.RuleShadowMode
	nStats      = metrics.NumRuleStats
)

var suffixes = [nStats]string{".total_hits", ".over_limit", ".near_limit", ".within_limit", ".shadow_mode"}

// counters are one key's counters: atomics that halt's /metrics reads at scrape time and
// the reference's store at its flush (flush), so that a call only adds.
type counters struct {
	*metrics.RuleCounters
	ref  [nStats]gostats.Counter // nil without a store
	sent [nStats]uint64          // what ref has been given; under Stats.mu at flush
}

func (c *counters) add(stat int, n uint64) { c.V[stat].Add(n) }

// New returns the observer.
func New(o Options) (*Stats, error) {
	if o.Metrics == nil {
		o.Metrics = metrics.Discard()
	}
	if !(o.NearLimitRatio >= 0 && o.NearLimitRatio <= 1) {
		return nil, fmt.Errorf("near-limit ratio %v: want a share of the limit, 0..1", o.NearLimitRatio)
	}
	s := &Stats{m: o.Metrics, ratio: float32(o.NearLimitRatio), keys: map[string]*counters{}}
	if o.Store != nil {
		s.rl = o.Store.ScopeWithTags("ratelimit", o.ExtraTags).Scope("service").Scope("rate_limit")
		o.Store.AddStatGenerator(s)
	}
	return s, nil
}

// GenerateStats runs at every flush of the reference's store: each counter is given
// what its key counted since the last flush.
func (s *Stats) GenerateStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.keys {
		for i, r := range c.ref {
			if now := c.V[i].Load(); now > c.sent[i] {
				r.Add(now - c.sent[i])
				c.sent[i] = now
			}
		}
	}
}

// OnViolation does nothing: violations are not among the reference's stats.
func (s *Stats) OnViolation(context.Context, *engine.ViolationEvent) {}

// OnDecision counts one descriptor's hits, as the reference's limiter does
// (src/limiter/base_limiter.go): every hit in total_hits; an admitted call's hits in
// within_limit, and those past the near-limit threshold also in near_limit; a refused
// call's hits in over_limit; a shadow-mode rule's hits over the limit in over_limit
// and shadow_mode. Decisions without a limit (no rule matched, unlimited, exempt) and
// calls that only check (hits 0) count nothing, as there.
func (s *Stats) OnDecision(_ context.Context, ev *engine.DecisionEvent) {
	d := ev.Decision
	if ev.Hits == 0 || d.Limit == nil || d.Kind == engine.KindExempt || (d.Rule != nil && d.Rule.Unlimited) {
		return
	}
	c := s.counters(ev)
	n := ev.Hits
	c.add(totalHits, n)
	if d.FailedOpen {
		// The store did not decide: the reference counts the hits and the error only.
		return
	}
	cost := int64(1)
	if d.Rule != nil && d.Rule.Cost > 1 {
		cost = d.Rule.Cost
	}
	r := &d.Result
	if !r.Allowed {
		// A refused call: halt's stores do not say how much of it fitted, so every
		// hit is over the limit (the reference splits a multi-hit call that crosses
		// the limit into its part over and its part near).
		c.add(overLimit, n)
		if d.Shadow {
			c.add(shadowMode, n)
		}
		return
	}
	c.add(withinLimit, n)
	if near := nearHits(r.Limit, r.Remaining, n, cost, s.ratio); near > 0 {
		c.add(nearLimit, near)
	}
}

// nearHits is how many of n admitted hits (cost units each) landed past the near-limit
// threshold, which the reference computes as floor(limit x ratio) in float32. A hit
// counts when any of its cost lies past the threshold.
func nearHits(limit, remaining int64, n uint64, cost int64, ratio float32) uint64 {
	threshold := int64(math.Floor(float64(float32(limit) * ratio)))
	after := limit - remaining
	if after <= threshold {
		return 0
	}
	units := after - threshold
	if spent := int64(min(n, uint64(math.MaxInt64)/uint64(cost))) * cost; units > spent {
		units = spent
	}
	return min(n, uint64((units+cost-1)/cost))
}

// counters returns the counters of the event's key.
func (s *Stats) counters(ev *engine.DecisionEvent) *counters {
	r := ev.Decision.Rule
	if r == nil {
		// Envoy's limit override: the reference keys it by the whole request
		// descriptor, request values included.
		return s.dynamic(ev.Domain, ev.Domain, descriptorKey(ev.Domain, ev.Entries))
	}
	ri := s.rule(ev.Domain, r)
	if !ri.dynamic {
		return ri.c
	}
	return s.dynamic(ev.Domain, ri.static, RequestKey(ev.Domain, r, ev.Entries))
}

// rule returns the cached facts of r.
func (s *Stats) rule(domain string, r *config.Rule) *ruleInfo {
	if v, ok := s.rules.Load(r); ok {
		return v.(*ruleInfo)
	}
	ri := &ruleInfo{static: StaticKey(domain, r), dynamic: r.DetailedMetric}
	for _, l := range r.Levels {
		ri.dynamic = ri.dynamic || l.ValueToMetric
	}
	if !ri.dynamic {
		ri.c = s.key(domain, ri.static)
	}
	if s.ruleCount.Add(1) > maxRuleCache {
		s.rules.Clear()
		s.ruleCount.Store(1)
	}
	s.rules.Store(r, ri)
	return ri
}

// dynamic returns the counters of a request-valued key, or of its group's overflow key
// once the cap is reached.
func (s *Stats) dynamic(domain, group, key string) *counters {
	// Request values may hold bytes that are not UTF-8 (internal/wire lets them
	// through); a Prometheus label must be UTF-8, and two keys that differ only there
	// must be one series.
	key = strings.ToValidUTF8(key, "\uFFFD")
	s.mu.RLock()
	c, ok := s.keys[key]
	s.mu.RUnlock()
	if ok {
		return c
	}
	if !s.m.RuleKeys().Admit(group, key) {
		key = group + "." + metrics.OverflowKey
	}
	return s.key(domain, key)
}

// key returns (creating) the counters of full key DOMAIN.KEY.
func (s *Stats) key(domain, full string) *counters {
	s.mu.RLock()
	c, ok := s.keys[full]
	s.mu.RUnlock()
	if ok {
		return c
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.keys[full]; ok {
		return c
	}
	c = &counters{RuleCounters: s.m.NewRuleCounters(domain, strings.TrimPrefix(full, domain+"."))}
	if s.rl != nil {
		for i := range c.ref {
			c.ref[i] = s.rl.NewCounter(full + suffixes[i])
		}
	}
	s.keys[full] = c
	return c
}

// finalKey is one level's part of a key as the reference writes it: key, or key_value.
func finalKey(key, value string) string {
	if value == "" {
		return key
	}
	return key + "_" + value
}

// StaticKey is the reference's key of rule r (its FullKey): the domain and the path of
// configured descriptors that led to it, each key or key_value (a wildcard value as
// written in the file), joined by dots: "mongo_cps.database_users",
// "messaging.message_type_marketing.to_number".
func StaticKey(domain string, r *config.Rule) string {
	if len(r.Levels) == 0 {
		return domain + "." + r.Name // a rule ext_authz resolved outside the tree
	}
	var b strings.Builder
	b.WriteString(domain)
	for _, l := range r.Levels {
		b.WriteByte('.')
		b.WriteString(finalKey(l.Key, l.Value))
	}
	return b.String()
}

// RequestKey is the key the reference counts a request under for rule r: with
// detailed_metric, the whole request descriptor (key_value of every entry); otherwise
// the rule's key with the request's value in each level marked value_to_metric.
func RequestKey(domain string, r *config.Rule, entries []config.Entry) string {
	if r.DetailedMetric {
		return descriptorKey(domain, entries)
	}
	if len(r.Levels) == 0 {
		return StaticKey(domain, r)
	}
	var b strings.Builder
	b.WriteString(domain)
	for i, l := range r.Levels {
		b.WriteByte('.')
		if l.ValueToMetric && i < len(entries) {
			b.WriteString(finalKey(entries[i].Key, entries[i].Value))
		} else {
			b.WriteString(finalKey(l.Key, l.Value))
		}
	}
	return b.String()
}

// descriptorKey is the reference's key of a whole request descriptor.
func descriptorKey(domain string, entries []config.Entry) string {
	var b strings.Builder
	b.WriteString(domain)
	for _, e := range entries {
		b.WriteByte('.')
		b.WriteString(finalKey(e.Key, e.Value))
	}
	return b.String()
}
