// Package plans is halt-envoy's rate-limit configuration: the model, loading, validation
// and hot reload.
//
// The file format is the reference Envoy rate-limit service's (envoyproxy/ratelimit): a
// reference file loads unchanged and matches exactly as there. halt adds keys next to the
// reference ones (algorithm, burst, unit_multiplier, max_delay, rate_limits, policy, cost,
// failure_mode, ...); docs/config.md describes every key.
//
// A Set is one validated load of a file or directory. It is immutable: the server keeps a
// *Set per request, and a reload builds a whole new Set and swaps it in atomically (Watcher).
// Nothing here is global: configuration is data that flows in.
package config

import (
	"sort"
	"strings"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/adaptive"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// Entry is one (key, value) of a request descriptor.
type Entry struct{ Key, Value string }

// FailureMode says what to answer when the store cannot decide (unreachable, timed out).
type FailureMode string

// The failure modes. The empty FailureMode inherits: descriptor, then policy, then the
// file's failure_mode, then the server default.
const (
	FailAllow FailureMode = "allow" // answer OK (fail open)
	FailDeny  FailureMode = "deny"  // answer OVER_LIMIT (fail closed)
	FailError FailureMode = "error" // return a gRPC error; Envoy's failure_mode_deny decides
)

// Limit is one resolved limit of a Rule.
type Limit struct {
	// Name is rate_limit.name (the reference key, used by replaces); may be empty.
	Name      string
	Algorithm algorithms.Algorithm
	// Unit is "second", "minute", "hour", "day", "week", "month" or "year", lower case.
	Unit string
	// RequestsPerUnit is requests_per_unit as the reference carries it (the uint32 of the
	// Envoy response). It saturates at 2^32-1; Params.Requests holds the exact value.
	RequestsPerUnit uint32
	// UnitMultiplier is unit_multiplier, 1 by default: the window is Unit x UnitMultiplier.
	UnitMultiplier int64
	// Params is what the algorithms decide with. Period (us) = unit x multiplier; Burst is
	// set (requests_per_unit by default) for token_bucket and leaky_bucket, 0 otherwise.
	// It passed Params.Validate(Algorithm).
	Params algorithms.Limit
	// Consistency is rate_limit.consistency: "" or ConsistencyExact decides every hit in
	// the store; ConsistencyLocalFirst decides from a local share (consistency.go).
	Consistency Consistency
	// MaxOvershoot is the fraction of Params.Requests that local-first decisions may admit
	// beyond it across every replica, in (0, 1); 0 for an exact limit.
	MaxOvershoot float64
	// SyncInterval is how often a replica sends a local-first limit's hits to the store
	// and reads back the global count, and how often it reads the other regions'
	// counts of a SharedRegions limit; 0 for an exact limit of one region.
	SyncInterval time.Duration
	// SharedRegions is rate_limit.regions: shared: one limit for every region of the
	// deployment, each region counting its own hits in its own store and reading the
	// others' (internal/localfirst's Regions). Only fixed_window and
	// sliding_window_counter (RegionsUnsupported).
	SharedRegions bool
}

// Period returns the window length (unit x multiplier).
func (l *Limit) Period() time.Duration { return time.Duration(l.Params.Period) * time.Microsecond }

// Level describes how one descriptor level of a Rule is matched: the config node on the
// path from the domain to the rule. Levels[i] is the node that matched request entry i.
type Level struct {
	Key   string
	Value string // "" for a key-only (default) node
	// Wildcard reports Value (or Key, for a key-only wildcard) is a * pattern.
	Wildcard bool
	// ShareThreshold (reference share_threshold): every value matching this wildcard
	// shares one counter, keyed by the pattern instead of the request's value.
	ShareThreshold bool
	// ValueToMetric (reference value_to_metric): the request's value goes into this
	// level's metric name even though the node matched as a default or wildcard.
	ValueToMetric bool
}

// Rule is what Match returns: the resolved configuration of one descriptor node.
type Rule struct {
	Domain string
	// Name is rate_limit.name when the rule has a single named limit, else the
	// reference's descriptor path below the domain ("remote_address",
	// "header_match_foo.path", "database_users"); a plan's rule is that path, ":" and the
	// plan ("customer.plan:pro", "tenant:enterprise"). It is built from configuration
	// only, so it is a bounded metric label.
	Name string
	// Path is human-readable: "key=value/key2".
	Path string
	// Limits must all pass; the tightest is reported. Empty when Unlimited, or when the
	// rule has only Quotas.
	Limits    []Limit
	Unlimited bool
	// ShadowMode: over-limit is answered OK (and counted as shadow in metrics).
	ShadowMode bool
	// QuotaMode (reference quota_mode): this descriptor being over limit alone does not
	// make the call over limit; the call is over when a descriptor that is not in quota
	// mode is, or when every quota-mode descriptor of the call is (engine.Check). Not to
	// be confused with halt's calendar Quotas.
	QuotaMode bool
	// Metadata (reference metadata) is returned in the response's dynamic metadata when
	// the service is asked to (RESPONSE_DYNAMIC_METADATA): a JSON-like value, a
	// google.protobuf.Struct's fields (string, float64, bool, nil, []any, map[string]any).
	// Read only.
	Metadata map[string]any
	// DetailedMetric (reference detailed_metric): metrics carry the request's values.
	DetailedMetric bool
	// Replaces names the limits (Limit.Name) this rule replaces in the same request.
	Replaces []string
	// Cost multiplies hits: each request counts Cost x hits_addend. Default 1.
	Cost int64
	// FailureMode is "" to inherit the server default.
	FailureMode FailureMode
	// AllowAlgorithmOverride lets a request choose another algorithm for this rule.
	AllowAlgorithmOverride bool
	// Policy is the policy or preset the limits came from ("" for inline limits).
	Policy string
	// Levels is the path from the domain: one Level per request entry that matched.
	Levels []Level
	// File and Line locate the descriptor (or policy) that defined the rule.
	File string
	Line int
	// Quotas are the rule's calendar quotas: its own, then its plan's. Every one must pass.
	Quotas []Quota
	// Penalty is the progressive lockout applied to the rule's identity, nil when none.
	// The rule's own penalty wins over its plan's.
	Penalty *PenaltyPolicy
	// Plan is the plan whose limits the rule applies ("" when none).
	Plan string
	// PlanFallback reports the request named an unknown plan and the default plan was
	// applied instead.
	PlanFallback bool
	// Adaptive, when set, scales the rule's limits by a factor that follows a health
	// signal (internal/adaptive); nil for a fixed limit.
	Adaptive *adaptive.Spec
	// IdentitySkip is the index of the request entry that named the plan (plan_from_value),
	// -1 otherwise. Counter keys leave that entry out, so that a customer keeps its usage
	// when its plan changes.
	IdentitySkip int
	// Charges is how the rule takes its costs (over_charge, max_debt, report_only,
	// idempotency_ttl): the descriptor's own keys, then its plan's or policy's.
	Charges Charges
}

// node is one descriptor level of the match tree.
type node struct {
	exact  map[Entry]*node  // key=value descriptors
	keys   map[string]*node // key-only (default) descriptors
	wild   []wildNode       // wildcard descriptors, in configuration order
	rule   *Rule            // nil when the descriptor has no limit
	nchild int
	// planRules is set on a plan_from_value node: the prebuilt rule of every plan; rule
	// is then the fallback (default plan, PlanFallback).
	planRules map[string]*Rule
}

type wildNode struct {
	key, value string // value pattern; key is exact unless keyGlob
	keyGlob    bool   // key-only descriptor whose key holds a *: matches the key, any value
	n          *node
}

type domain struct {
	name        string
	file        string
	line        int
	failureMode FailureMode
	root        node
	loc         *time.Location // time_zone; nil when not set (UTC)
	exempt      *exemptions    // nil when the domain has no exemptions
}

// Set is an immutable, validated set of domains: one load of the config file or directory.
type Set struct {
	domains  map[string]*domain
	names    []string
	policies map[string]*Rule
	plans    map[string]*planDef
	// defaultPlan is default_plan (DefaultPlanName unless a file sets it).
	defaultPlan string
	files       []string
	effective   *EffectiveConfig
	penalties   map[string]*PenaltyPolicy
	// adaptive are the rules with an adaptive block, in file order.
	adaptive []*Rule
}

// AdaptiveRules returns the rules whose limits follow a health signal (adaptive:).
func (s *Set) AdaptiveRules() []*Rule { return append([]*Rule(nil), s.adaptive...) }

// Domains returns the domain names, sorted.
func (s *Set) Domains() []string { return append([]string(nil), s.names...) }

// Files returns the files the set was loaded from, sorted.
func (s *Set) Files() []string { return append([]string(nil), s.files...) }

// Policy returns a named policy, or a built-in preset, as a Rule (Domain is empty).
func (s *Set) Policy(name string) (*Rule, bool) {
	r, ok := s.policies[name]
	return r, ok
}

// Policies returns the names of every policy and preset, sorted.
func (s *Set) Policies() []string {
	out := make([]string, 0, len(s.policies))
	for n := range s.policies {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Match returns the rule for one request descriptor of domain, following the reference
// service's GetLimit: at each level it takes the key=value descriptor, else the first
// wildcard descriptor (configuration order) that matches, else the key-only descriptor;
// it stops when no descriptor matches or the matched one has no children; and a rule
// applies only when the descriptor reached for the last entry has a limit. It does not
// allocate.
func (s *Set) Match(dom string, entries []Entry) (*Rule, bool) {
	if s == nil || len(entries) == 0 {
		return nil, false
	}
	d := s.domains[dom]
	if d == nil {
		return nil, false
	}
	cur := &d.root
	last := len(entries) - 1
	for i := range entries {
		e := &entries[i]
		next := cur.exact[*e]
		if next == nil {
			for j := range cur.wild {
				w := &cur.wild[j]
				if w.keyGlob {
					if glob(w.key, e.Key) {
						next = w.n
						break
					}
				} else if w.key == e.Key && glob(w.value, e.Value) {
					next = w.n
					break
				}
			}
		}
		if next == nil {
			next = cur.keys[e.Key]
		}
		if next == nil {
			return nil, false
		}
		if i == last {
			if next.planRules != nil {
				if r := next.planRules[e.Value]; r != nil {
					return r, true
				}
			}
			if next.rule != nil {
				return next.rule, true
			}
			return nil, false
		}
		if next.nchild == 0 {
			return nil, false
		}
		cur = next
	}
	return nil, false
}

// glob reports whether s matches pattern, where * matches any run of bytes (also none)
// and every other byte matches itself. A single trailing * is the reference's prefix match.
func glob(pattern, s string) bool {
	// Fast path for the reference's trailing-* form.
	i := strings.IndexByte(pattern, '*')
	if i < 0 {
		return pattern == s
	}
	if i == len(pattern)-1 {
		return strings.HasPrefix(s, pattern[:i])
	}
	p, n := 0, 0
	star, mark := -1, 0
	for n < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, n
			p++
		case p < len(pattern) && pattern[p] == s[n]:
			p++
			n++
		case star >= 0:
			p = star + 1
			mark++
			n = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
