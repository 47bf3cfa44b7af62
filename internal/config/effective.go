package config

import (
	"sort"
	"strconv"
	"time"
)

// EffectiveConfig is what Set.Effective returns: the configuration as loaded, resolved
// (defaults filled in, policies expanded), for the /config endpoint. It holds no secrets:
// rate-limit files have none.
type EffectiveConfig struct {
	Files       []string           `json:"files"`
	Domains     []EffectiveDomain  `json:"domains"`
	Policies    []EffectiveRule    `json:"policies"`
	DefaultPlan string             `json:"default_plan"`
	Plans       []EffectivePlan    `json:"plans"`
	Penalties   []EffectivePenalty `json:"penalties,omitempty"`
}

// EffectivePlan is one plan, built-in (File is PresetFile) or configured.
type EffectivePlan struct {
	Name                   string           `json:"name"`
	Policy                 string           `json:"policy,omitempty"`
	Unlimited              bool             `json:"unlimited,omitempty"`
	ShadowMode             bool             `json:"shadow_mode,omitempty"`
	FailureMode            string           `json:"failure_mode,omitempty"`
	AllowAlgorithmOverride bool             `json:"allow_algorithm_override,omitempty"`
	Limits                 []EffectiveLimit `json:"limits,omitempty"`
	// Quotas' TimeZone is "" when it is the time zone of the domain using the plan.
	Quotas  []EffectiveQuota `json:"quotas,omitempty"`
	Penalty string           `json:"penalty,omitempty"`
	File    string           `json:"file"`
	Line    int              `json:"line,omitempty"`
}

// EffectiveQuota is a resolved Quota.
type EffectiveQuota struct {
	Name     string `json:"name"`
	Period   string `json:"period"`
	Requests int64  `json:"requests"`
	TimeZone string `json:"time_zone,omitempty"`
}

// EffectivePenalty is a resolved PenaltyPolicy.
type EffectivePenalty struct {
	Name      string   `json:"name"`
	Threshold int64    `json:"threshold"`
	Severity  int64    `json:"severity"`
	Ladder    []string `json:"ladder"`
	Decay     string   `json:"decay"`
	File      string   `json:"file"`
	Line      int      `json:"line"`
}

// EffectiveExemptions is the exemptions block of a domain, defaults filled in.
type EffectiveExemptions struct {
	Paths         []string         `json:"paths,omitempty"`
	PathKeys      []string         `json:"path_keys"`
	PrivateRanges bool             `json:"private_ranges"`
	CIDRs         []string         `json:"cidrs,omitempty"`
	AddressKeys   []string         `json:"address_keys"`
	Values        []EffectiveEntry `json:"values,omitempty"`
}

// EffectiveEntry is one exempt descriptor entry.
type EffectiveEntry struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// EffectiveDomain is one domain of an EffectiveConfig.
type EffectiveDomain struct {
	Domain      string                `json:"domain"`
	File        string                `json:"file"`
	FailureMode string                `json:"failure_mode,omitempty"`
	TimeZone    string                `json:"time_zone"`
	Exemptions  *EffectiveExemptions  `json:"exemptions,omitempty"`
	Descriptors []EffectiveDescriptor `json:"descriptors,omitempty"`
}

// EffectiveDescriptor is one descriptor node.
type EffectiveDescriptor struct {
	Key   string         `json:"key"`
	Value string         `json:"value,omitempty"`
	Path  string         `json:"path"`
	Line  int            `json:"line"`
	Rule  *EffectiveRule `json:"rule,omitempty"`
	// PlanFromValue: the request's value names the plan. Rule is then the fallback
	// (default plan) and PlanRules the rule of every plan, by plan name.
	PlanFromValue bool                  `json:"plan_from_value,omitempty"`
	PlanRules     []EffectiveRule       `json:"plan_rules,omitempty"`
	Descriptors   []EffectiveDescriptor `json:"descriptors,omitempty"`
}

// EffectiveRule is a resolved Rule.
type EffectiveRule struct {
	Name                   string           `json:"name"`
	Policy                 string           `json:"policy,omitempty"`
	Unlimited              bool             `json:"unlimited,omitempty"`
	ShadowMode             bool             `json:"shadow_mode,omitempty"`
	DetailedMetric         bool             `json:"detailed_metric,omitempty"`
	Replaces               []string         `json:"replaces,omitempty"`
	Cost                   int64            `json:"cost"`
	FailureMode            string           `json:"failure_mode,omitempty"`
	AllowAlgorithmOverride bool             `json:"allow_algorithm_override,omitempty"`
	Limits                 []EffectiveLimit `json:"limits,omitempty"`
	Plan                   string           `json:"plan,omitempty"`
	PlanFallback           bool             `json:"plan_fallback,omitempty"`
	Quotas                 []EffectiveQuota `json:"quotas,omitempty"`
	Penalty                string           `json:"penalty,omitempty"`
	File                   string           `json:"file"`
	Line                   int              `json:"line,omitempty"`
}

// EffectiveLimit is a resolved Limit.
type EffectiveLimit struct {
	Name            string `json:"name,omitempty"`
	Algorithm       string `json:"algorithm"`
	Unit            string `json:"unit"`
	UnitMultiplier  int64  `json:"unit_multiplier"`
	RequestsPerUnit int64  `json:"requests_per_unit"`
	Period          string `json:"period"`
	Burst           int64  `json:"burst,omitempty"`
	MaxDelay        string `json:"max_delay,omitempty"`
}

// Effective returns the effective configuration (an EffectiveConfig), JSON-marshalable.
func (s *Set) Effective() any { return s.effective }

func effectiveRule(r *Rule) *EffectiveRule {
	e := &EffectiveRule{
		Name: r.Name, Policy: r.Policy, Unlimited: r.Unlimited, ShadowMode: r.ShadowMode,
		DetailedMetric: r.DetailedMetric, Replaces: r.Replaces, Cost: r.Cost,
		FailureMode: string(r.FailureMode), AllowAlgorithmOverride: r.AllowAlgorithmOverride,
		File: r.File, Line: r.Line, Plan: r.Plan, PlanFallback: r.PlanFallback,
	}
	e.Limits = effectiveLimits(r.Limits)
	for _, q := range r.Quotas {
		e.Quotas = append(e.Quotas, EffectiveQuota{Name: q.Name, Period: q.Period.String(), Requests: q.Requests, TimeZone: q.Location.String()})
	}
	if r.Penalty != nil {
		e.Penalty = r.Penalty.Name
	}
	return e
}

func effectiveLimits(ls []Limit) []EffectiveLimit {
	var out []EffectiveLimit
	for i := range ls {
		l := &ls[i]
		el := EffectiveLimit{
			Name: l.Name, Algorithm: l.Algorithm.String(), Unit: l.Unit, UnitMultiplier: l.UnitMultiplier,
			RequestsPerUnit: l.Params.Requests, Period: l.Period().String(), Burst: l.Params.Burst,
		}
		if l.Params.MaxDelay > 0 {
			el.MaxDelay = (time.Duration(l.Params.MaxDelay) * time.Microsecond).String()
		}
		out = append(out, el)
	}
	return out
}

func buildEffective(s *Set, doms map[string]*EffectiveDomain, penalties map[string]*penaltyCfg) *EffectiveConfig {
	e := &EffectiveConfig{Files: s.Files()}
	for _, n := range s.names {
		e.Domains = append(e.Domains, *doms[n])
	}
	names := make([]string, 0, len(s.policies))
	for n := range s.policies {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		e.Policies = append(e.Policies, *effectiveRule(s.policies[n]))
	}
	e.DefaultPlan = s.defaultPlan
	for _, n := range sortedKeys(s.plans) {
		p := s.plans[n]
		r := p.rule
		ep := EffectivePlan{
			Name: n, Policy: r.Policy, Unlimited: r.Unlimited, ShadowMode: r.ShadowMode,
			FailureMode: string(r.FailureMode), AllowAlgorithmOverride: r.AllowAlgorithmOverride,
			Limits: effectiveLimits(r.Limits), File: p.file, Line: p.line,
		}
		for _, q := range p.quotas {
			tz := q.locName
			if tz == "" && q.fileLoc != nil {
				tz = q.fileLoc.String()
			}
			ep.Quotas = append(ep.Quotas, EffectiveQuota{Name: q.name, Period: q.period.String(), Requests: q.requests, TimeZone: tz})
		}
		if p.penalty != nil {
			ep.Penalty = p.penalty.Name
		}
		e.Plans = append(e.Plans, ep)
	}
	for _, n := range sortedKeys(penalties) {
		pc := penalties[n]
		pp := pc.pol.Params
		ep := EffectivePenalty{
			Name: n, Threshold: pp.Requests, Severity: pc.pol.Severity,
			Decay: us(pp.Period), File: pc.file, Line: pc.line,
		}
		for i := 0; i < pp.Steps; i++ {
			ep.Ladder = append(ep.Ladder, us(pp.Ladder[i]))
		}
		e.Penalties = append(e.Penalties, ep)
	}
	return e
}

func us(v int64) string { return (time.Duration(v) * time.Microsecond).String() }

func quote(s string) string { return strconv.Quote(s) }
func itoa(i int) string     { return strconv.Itoa(i) }
