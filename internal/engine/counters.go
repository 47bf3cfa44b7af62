package engine

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
)

// The results a rule's decision is counted under (halt_decisions_total's result).
const (
	resOK = iota
	resOverLimit
	resShadow
	resFailOpen
	nResults
)

var resultNames = [nResults]string{metrics.ResultOK, metrics.ResultOverLimit, metrics.ResultShadow, metrics.ResultFailOpen}

// counterCache holds, for the rules of one configuration, the decision counters each
// has been counted under: a rule's counter is looked up by its label values once, then
// by the rule's pointer, instead of hashing and checking three label values on every
// decision (a measurable share of a call with several descriptors). A new configuration
// gets a new cache, so the rules of old ones are not kept.
type counterCache struct {
	set   *config.Set
	rules sync.Map // *config.Rule -> *ruleCounters
}

// ruleCounters are one rule's counters in one domain, filled as results occur (a
// result never seen has no series, as before).
type ruleCounters struct {
	domain string
	dec    [nResults]atomic.Pointer[counter]
	plan   [nResults]atomic.Pointer[counter]
}

type counter struct{ prometheus.Counter }

// ruleCounters returns rule's counters for domain, nil when they are not cached (a rule
// counted under another domain than its own, as an ext_authz route's policy).
func (e *Engine) ruleCounters(set *config.Set, domain string, rule *config.Rule) *ruleCounters {
	c := e.counters.Load()
	if c == nil || c.set != set {
		c = &counterCache{set: set}
		e.counters.Store(c) // a racing call's cache is dropped: it only costs a lookup
	}
	if v, ok := c.rules.Load(rule); ok {
		rc := v.(*ruleCounters)
		if rc.domain != domain {
			return nil
		}
		return rc
	}
	v, _ := c.rules.LoadOrStore(rule, &ruleCounters{domain: domain})
	if rc := v.(*ruleCounters); rc.domain == domain {
		return rc
	}
	return nil
}

// inc counts one decision of result res in slot (dec or plan), looked up by labels the
// first time.
func (rc *ruleCounters) inc(slot *[nResults]atomic.Pointer[counter], vec *prometheus.CounterVec, label string, res int) {
	c := slot[res].Load()
	if c == nil {
		c = &counter{vec.WithLabelValues(rc.domain, label, resultNames[res])}
		slot[res].Store(c) // a racing fill stores the same counter
	}
	c.Inc()
}
