// Package metrics defines halt-envoy's Prometheus metrics on a registry of its own (no
// global registry, so tests and embedders can run several servers in one process).
//
// Label cardinality is bounded by configuration: domain and rule names come from config
// files, never from request values, except for the keys that rules ask for by name
// (detailed_metric, value_to_metric) and Envoy's limit overrides: those are bounded by a
// KeyCap, past which they are counted under OverflowKey.
package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Decision results used as the "result" label.
const (
	ResultOK        = "ok"
	ResultOverLimit = "over_limit"
	ResultShadow    = "shadow"
	ResultError     = "error"
	ResultFailOpen  = "fail_open"
	ResultExempt    = "exempt"
)

// Metrics holds every collector halt-envoy exports.
type Metrics struct {
	// Registry is what /metrics serves.
	Registry *prometheus.Registry

	// Decisions counts descriptor decisions by domain, rule and result.
	Decisions *prometheus.CounterVec
	// DetailedDecisions counts decisions per full descriptor for rules marked detailed_metric.
	DetailedDecisions *prometheus.CounterVec
	// Requests counts gRPC calls by service method and code.
	Requests *prometheus.CounterVec
	// RequestDuration is the server-side latency of a whole call.
	RequestDuration *prometheus.HistogramVec
	// StoreDuration is the latency of one store Apply.
	StoreDuration *prometheus.HistogramVec
	// StoreErrors counts failed store operations by backend.
	StoreErrors *prometheus.CounterVec
	// ConfigReloads counts reloads by result (success, failure).
	ConfigReloads *prometheus.CounterVec
	// ConfigLastReloadSuccess is 1 when the last reload succeeded.
	ConfigLastReloadSuccess prometheus.Gauge
	// MemoryKeys is the number of keys held by the in-memory store.
	MemoryKeys prometheus.GaugeFunc
	// MemoryEvictions counts live keys evicted to honour the in-memory store's bound.
	MemoryEvictions prometheus.CounterFunc
	// Rejected counts calls refused before evaluation (overload, bad input) by reason.
	Rejected *prometheus.CounterVec
	// InvalidUTF8 counts requests whose strings held invalid UTF-8, decoded as bytes and
	// decided as any other, by message type.
	InvalidUTF8 *prometheus.CounterVec
	// ShapingDelay observes how long leaky-bucket shaping held admitted requests.
	ShapingDelay prometheus.Histogram
	// LocalFirstDecisions counts the decisions of local-first limits by domain, rule and
	// where they were made (local: from the replica's budget; store: one op, as exact).
	LocalFirstDecisions *prometheus.CounterVec
	// LocalFirstStoreOps counts the store ops local-first limits cost (syncs, decisions
	// sent to the store, refits), by domain and rule: divided by LocalFirstDecisions,
	// the store ops per decision.
	LocalFirstStoreOps *prometheus.CounterVec
	// LocalFirstOvershoot estimates the hits admitted locally beyond the limit (an upper
	// bound: hits of a batch the store found over the limit), by domain and rule.
	LocalFirstOvershoot *prometheus.CounterVec
	// LocalFirstBudget is the local budget last granted to a key of the rule.
	LocalFirstBudget *prometheus.GaugeVec
	// LocalFirstSyncLag observes how long a locally admitted hit waited before the store
	// counted it (the age of the oldest hit of each batch).
	LocalFirstSyncLag prometheus.Histogram
	// LocalFirstReplicas is the replica count discovered through the store.
	LocalFirstReplicas prometheus.Gauge
	// LocalFirstKeys is the keys with local state; LocalFirstKeysRefused counts the keys
	// decided exactly because that state was full.
	LocalFirstKeys        prometheus.Gauge
	LocalFirstKeysRefused prometheus.Counter
	// RegionStaleness is, per other region, how long ago its store last answered a read
	// of the shared limits' counts: the age of the counts this region decides on.
	RegionStaleness *prometheus.GaugeVec
	// RegionReadErrors counts failed reads of another region's store, by region.
	RegionReadErrors *prometheus.CounterVec
	// RegionShareDecisions counts the decisions of shared limits held to this region's
	// share of the limit because a count of another region was older than the stale
	// bound (a partition) or not read yet.
	RegionShareDecisions prometheus.Counter
	// Connections is the connections open now, by listener (grpc, http, admin): how
	// close each is to its cap.
	Connections *prometheus.GaugeVec
	// ConnectionsRefused counts connections closed for abuse or refused while their
	// source is in cooldown, by listener and reason (rapid_reset, cooldown).
	ConnectionsRefused *prometheus.CounterVec
	// Exemptions counts descriptors let through uncounted, by reason, for audits.
	Exemptions *prometheus.CounterVec
	// PlanDecisions counts decisions per plan.
	PlanDecisions *prometheus.CounterVec
	// PlanFallbacks counts requests that named an unknown plan and got the default one.
	PlanFallbacks *prometheus.CounterVec
	// QuotaDecisions counts decisions reported by a quota (usually its denials).
	QuotaDecisions *prometheus.CounterVec
	// PenaltyViolations counts violations recorded against penalty policies.
	PenaltyViolations *prometheus.CounterVec
	// PenaltyLockouts counts lockouts started.
	PenaltyLockouts *prometheus.CounterVec
	// PenaltyRefusals counts requests refused because their identity is locked out.
	PenaltyRefusals *prometheus.CounterVec
	// AlgorithmOverrides counts per-request algorithm asks by outcome (applied, ignored, invalid).
	AlgorithmOverrides *prometheus.CounterVec
	// Idempotency counts the descriptors that carried an idempotency key their rule keeps,
	// by outcome (first, replayed, conflict, in_progress, unclaimed).
	Idempotency *prometheus.CounterVec
	// GraphQLRefusals counts GraphQL requests ext_authz refused before charging them, by
	// route and the rule they broke (max_depth, max_cost, syntax, ...).
	GraphQLRefusals *prometheus.CounterVec
	// GraphQLCost observes the cost of each priced GraphQL request, by route (charged
	// unless a limit refused the request).
	GraphQLCost *prometheus.HistogramVec
	// AdaptiveFactor is the factor in force of each adaptive rule (the fraction of its
	// configured limits applied), by domain and rule.
	AdaptiveFactor *prometheus.GaugeVec
	// AdaptiveSignalErrors counts evaluations of an adaptive rule's signal that said
	// nothing (the factor held), by domain, rule and reason (query, empty, series, type).
	AdaptiveSignalErrors *prometheus.CounterVec
	// AbuseDetections counts ext_authz's abuse detections, by detector (fanout,
	// auth_failures, network_change) and mode (enforce, dry_run).
	AbuseDetections *prometheus.CounterVec

	// rules exports the reference service's per-rule stats (total_hits, over_limit,
	// near_limit, within_limit, shadow_mode), in hits, by domain and the reference's key
	// of the rule: halt_rule_*_total (NewRuleCounters; internal/stats counts them).
	rules *ruleCollector

	// ruleKeys and detailedKeys bound the request-valued keys of the per-rule stats and
	// of DetailedDecisions; SetKeyCaps replaces them before serving.
	ruleKeys, detailedKeys atomic.Pointer[KeyCap]
}

// RuleKeys is the cap on the request-valued keys of the per-rule stats.
func (m *Metrics) RuleKeys() *KeyCap { return m.ruleKeys.Load() }

// DetailedKeys is the cap on the descriptors of halt_detailed_decisions_total.
func (m *Metrics) DetailedKeys() *KeyCap { return m.detailedKeys.Load() }

// SetKeyCaps sets the caps on request-valued keys (per rule, total; zero for the
// defaults) of the per-rule stats and of halt_detailed_decisions_total. Call it before
// any traffic: keys admitted under the old caps are forgotten.
func (m *Metrics) SetKeyCaps(perRule, total int) {
	m.ruleKeys.Store(NewKeyCap(perRule, total))
	m.detailedKeys.Store(NewKeyCap(perRule, total))
}

// MemoryStore is what the metrics read from the in-memory store.
type MemoryStore interface {
	Len() int
	Evicted() int64
}

// New creates and registers every metric, with the Go runtime and process collectors,
// on a registry for /metrics. mem returns the in-memory store (nil, or a nil func, when
// another backend is used); it is read at scrape time.
func New(mem func() MemoryStore) *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return build(r, mem)
}

// Discard returns metrics nobody reads: every collector exists and counts, on a registry
// of its own that no server is told about. Whoever is built without metrics (an engine
// in a test, the Go library's embedders) gets these, so that the code that counts never
// asks whether there is anything to count into.
func Discard() *Metrics { return build(prometheus.NewRegistry(), nil) }

// build creates every halt collector and registers it on r.
func build(r *prometheus.Registry, mem func() MemoryStore) *Metrics {
	latency := []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}
	m := &Metrics{
		Registry: r,
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halt_decisions_total", Help: "Descriptor decisions by domain, rule and result (ok, over_limit, shadow, error, fail_open, exempt).",
		}, []string{"domain", "rule", "result"}),
		DetailedDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halt_detailed_decisions_total", Help: "Decisions per full descriptor, only for rules with detailed_metric: true.",
		}, []string{"domain", "descriptor", "result"}),
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halt_requests_total", Help: "gRPC calls by method and status code.",
		}, []string{"method", "code"}),
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "halt_request_duration_seconds", Help: "Server-side latency of a call, shaping delay included.", Buckets: latency,
		}, []string{"method"}),
		StoreDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "halt_store_duration_seconds", Help: "Latency of one store round (all descriptors of a call).", Buckets: latency,
		}, []string{"backend"}),
		StoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halt_store_errors_total", Help: "Store operations that failed (unavailable, timeout, contention, corrupt state).",
		}, []string{"backend"}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halt_config_reloads_total", Help: "Configuration reloads by result (success, failure).",
		}, []string{"result"}),
		ConfigLastReloadSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "halt_config_last_reload_successful", Help: "1 if the last configuration reload succeeded, 0 if the last good config is being kept.",
		}),
		InvalidUTF8: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halt_invalid_utf8_total", Help: "Requests whose string fields held bytes that are not UTF-8, decided on those bytes, by message type.",
		}, []string{"message"}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halt_rejected_total", Help: "Calls refused before evaluation, by reason (invalid_argument, overload).",
		}, []string{"reason"}),
		ShapingDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "halt_shaping_delay_seconds", Help: "How long leaky-bucket shaping held admitted requests.", Buckets: latency,
		}),
		Connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "halt_connections", Help: "Connections open now, by listener (grpc, http, admin); each listener has a cap (--grpc-max-conns, --http-max-conns).",
		}, []string{"listener"}),
		ConnectionsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halt_connections_refused_total", Help: "Connections closed for abuse or refused while their source address is in cooldown, by listener and reason (rapid_reset, cooldown).",
		}, []string{"listener", "reason"}),
	}
	m.Exemptions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_exemptions_total", Help: "Descriptors exempted from limits (not counted), by domain and reason (path, private_address, cidr, value).",
	}, []string{"domain", "reason"})
	m.PlanDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_plan_decisions_total", Help: "Decisions of plan rules by domain, plan and result.",
	}, []string{"domain", "plan", "result"})
	m.PlanFallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_plan_fallbacks_total", Help: "Requests naming an unknown plan that were given the default plan.",
	}, []string{"domain"})
	m.QuotaDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_quota_decisions_total", Help: "Decisions reported by a calendar quota, by domain, quota and result.",
	}, []string{"domain", "quota", "result"})
	m.PenaltyViolations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_penalty_violations_total", Help: "Violations recorded against a penalty policy.",
	}, []string{"domain", "penalty"})
	m.PenaltyLockouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_penalty_lockouts_total", Help: "Lockouts started by a penalty policy.",
	}, []string{"domain", "penalty"})
	m.PenaltyRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_penalty_refusals_total", Help: "Requests refused because their identity is locked out.",
	}, []string{"domain", "penalty"})
	m.AlgorithmOverrides = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_algorithm_overrides_total", Help: "Per-request algorithm asks by outcome (applied, ignored: not allowed by the rule, invalid).",
	}, []string{"outcome"})
	m.Idempotency = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_idempotency_total", Help: "Descriptors with an idempotency key their rule keeps, by outcome (first: decided and recorded; replayed: answered from the record, not charged; conflict: the key was used by another request; in_progress: its first request was still being decided; unclaimed: the store could not claim it, decided as without a key).",
	}, []string{"outcome"})
	m.rules = newRuleCollector()
	m.GraphQLRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_graphql_refusals_total", Help: "GraphQL requests refused by ext_authz before they were charged, by route and the rule they broke.",
	}, []string{"route", "rule"})
	m.GraphQLCost = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "halt_graphql_cost", Help: "Cost of each priced GraphQL request, by route (charged unless a limit or quota refused the request).",
		Buckets: []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000},
	}, []string{"route"})
	r.MustRegister(m.GraphQLRefusals, m.GraphQLCost)
	m.AdaptiveFactor = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "halt_adaptive_factor", Help: "The factor in force of each adaptive rule: the fraction of its configured limits applied.",
	}, []string{"domain", "rule"})
	m.AdaptiveSignalErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_adaptive_signal_errors_total", Help: "Evaluations of an adaptive rule's signal that said nothing (the factor held), by reason: query (failed), empty (no series), series (several), type.",
	}, []string{"domain", "rule", "reason"})
	r.MustRegister(m.AdaptiveFactor, m.AdaptiveSignalErrors)
	m.LocalFirstDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_local_first_decisions_total", Help: "Decisions of local-first limits by domain, rule and where they were made (local: from the replica's budget; store: one store op).",
	}, []string{"domain", "rule", "where"})
	m.LocalFirstStoreOps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_local_first_store_ops_total", Help: "Store ops spent on local-first limits (batched syncs, decisions sent to the store), by domain and rule.",
	}, []string{"domain", "rule"})
	m.LocalFirstOvershoot = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_local_first_overshoot_hits_total", Help: "Estimate (an upper bound) of hits admitted locally beyond the limit, found when their batch reached the store, by domain and rule.",
	}, []string{"domain", "rule"})
	m.LocalFirstBudget = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "halt_local_first_budget", Help: "The local budget (hits) last granted to a key of the rule at a sync.",
	}, []string{"domain", "rule"})
	m.LocalFirstSyncLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "halt_local_first_sync_lag_seconds", Help: "How long a locally admitted hit waited before the store counted it (the oldest hit of each batch).", Buckets: latency,
	})
	m.LocalFirstReplicas = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "halt_local_first_replicas", Help: "The halt replicas sharing the store, as discovered through it (announcements with a TTL).",
	})
	m.LocalFirstKeys = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "halt_local_first_keys", Help: "Keys of local-first limits with local state on this replica.",
	})
	m.LocalFirstKeysRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "halt_local_first_keys_refused_total", Help: "New keys of local-first limits decided exactly because the local state held its maximum of keys.",
	})
	r.MustRegister(m.LocalFirstDecisions, m.LocalFirstStoreOps, m.LocalFirstOvershoot, m.LocalFirstBudget, m.LocalFirstSyncLag,
		m.LocalFirstReplicas, m.LocalFirstKeys, m.LocalFirstKeysRefused)
	m.RegionStaleness = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "halt_region_staleness_seconds", Help: "Per other region, how long ago its store last answered a read of the shared limits' counts (since the first read, if it never answered; regions: shared).",
	}, []string{"region"})
	m.RegionReadErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_region_read_errors_total", Help: "Failed reads of another region's store (regions: shared), by region.",
	}, []string{"region"})
	m.RegionShareDecisions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "halt_region_share_decisions_total", Help: "Decisions of shared limits held to this region's share because another region's count was stale (a partition) or not read yet.",
	})
	r.MustRegister(m.RegionStaleness, m.RegionReadErrors, m.RegionShareDecisions)
	m.AbuseDetections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halt_abuse_detections_total", Help: "ext_authz's abuse detections, by detector (fanout, auth_failures, network_change, spike) and mode (enforce: the penalty was charged; dry_run: only logged).",
	}, []string{"detector", "mode"})
	r.MustRegister(m.AbuseDetections)
	m.SetKeyCaps(0, 0)
	keys := func(which string, c func() *KeyCap) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "halt_request_keys",
			Help:        "Distinct request-valued keys (detailed_metric, value_to_metric, limit overrides) with series of their own; past the cap they count under the key " + OverflowKey + ".",
			ConstLabels: prometheus.Labels{"metric": which},
		}, func() float64 { return float64(c().Len()) })
	}
	r.MustRegister(m.rules, keys("halt_rule_hits_total", m.RuleKeys), keys("halt_detailed_decisions_total", m.DetailedKeys))
	r.MustRegister(m.Exemptions, m.PlanDecisions, m.PlanFallbacks, m.QuotaDecisions, m.PenaltyViolations,
		m.PenaltyLockouts, m.PenaltyRefusals, m.AlgorithmOverrides, m.Idempotency)
	memStat := func(f func(MemoryStore) float64) func() float64 {
		return func() float64 {
			if mem == nil {
				return 0
			}
			if st := mem(); st != nil {
				return f(st)
			}
			return 0
		}
	}
	m.MemoryKeys = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "halt_memory_keys", Help: "Keys held by the in-memory store.",
	}, memStat(func(st MemoryStore) float64 { return float64(st.Len()) }))
	m.MemoryEvictions = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "halt_memory_evictions_total", Help: "Live keys evicted from the in-memory store to stay within max_keys.",
	}, memStat(func(st MemoryStore) float64 { return float64(st.Evicted()) }))
	r.MustRegister(m.Decisions, m.DetailedDecisions, m.Requests, m.RequestDuration, m.StoreDuration, m.StoreErrors,
		m.ConfigReloads, m.ConfigLastReloadSuccess, m.MemoryKeys, m.MemoryEvictions, m.Rejected, m.InvalidUTF8, m.ShapingDelay,
		m.Connections, m.ConnectionsRefused)
	m.ConfigLastReloadSuccess.Set(1)
	return m
}

// WatchStoreEvictions exports evicted, the keys the store's own server evicted under
// memory pressure since halt started (Redis's evicted_keys), as
// halt_store_server_evictions_total{backend}. Each may have been a counter that is now
// silently forgotten, which no call can notice; only the server counts it.
func (m *Metrics) WatchStoreEvictions(backend string, evicted func() uint64) {
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name:        "halt_store_server_evictions_total",
		Help:        "Keys the store's server evicted under memory pressure since halt started (Redis evicted_keys); each may be a forgotten rate-limit count.",
		ConstLabels: prometheus.Labels{"backend": backend},
	}, func() float64 { return float64(evicted()) }))
}
