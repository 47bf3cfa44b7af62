package metrics

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// The per-rule stats, in the order of RuleCounters.V: the reference's total_hits,
// over_limit, near_limit, within_limit, shadow_mode.
const (
	RuleHits = iota
	RuleOverLimit
	RuleNearLimit
	RuleWithinLimit
	RuleShadowMode
	NumRuleStats
)

// RuleCounters are one rule key's stats. They are plain atomics side by side, read at
// scrape time: a call adds to one cache line, not to five counters of a vector.
type RuleCounters struct {
	V           [NumRuleStats]atomic.Uint64
	Domain, Key string
}

// ruleCollector exports every RuleCounters under halt_rule_*{domain,key}.
type ruleCollector struct {
	descs [NumRuleStats]*prometheus.Desc
	mu    sync.RWMutex
	all   []*RuleCounters
}

func newRuleCollector() *ruleCollector {
	c := &ruleCollector{}
	for i, d := range [NumRuleStats][2]string{
		{"halt_rule_hits_total", "Hits (hits_addend summed, not calls) of each rule, by domain and the reference's rule key (ratelimit.service.rate_limit.DOMAIN.KEY.total_hits)."},
		{"halt_rule_over_limit_hits_total", "Hits over the limit (the reference's over_limit), shadow-mode rules included."},
		{"halt_rule_near_limit_hits_total", "Hits between NEAR_LIMIT_RATIO of the limit and the limit (the reference's near_limit)."},
		{"halt_rule_within_limit_hits_total", "Hits of admitted calls (the reference's within_limit)."},
		{"halt_rule_shadow_mode_hits_total", "Hits over the limit of shadow-mode rules, answered OK (the reference's shadow_mode)."},
	} {
		c.descs[i] = prometheus.NewDesc(d[0], d[1], []string{"domain", "key"}, nil)
	}
	return c
}

func (c *ruleCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *ruleCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.RLock()
	all := c.all
	c.mu.RUnlock()
	for _, rc := range all {
		for i, d := range c.descs {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(rc.V[i].Load()), rc.Domain, rc.Key)
		}
	}
}

// NewRuleCounters returns the stats of one rule key, exported from now on. Call it once
// per key: the stats package keeps them, bounded by RuleKeys.
func (m *Metrics) NewRuleCounters(domain, key string) *RuleCounters {
	rc := &RuleCounters{Domain: domain, Key: key}
	m.rules.mu.Lock()
	m.rules.all = append(m.rules.all, rc)
	m.rules.mu.Unlock()
	return rc
}
