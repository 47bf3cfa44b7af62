package plans

import (
	"sort"
	"strconv"
	"time"
)

// EffectiveConfig is what Set.Effective returns: the configuration as loaded, resolved
// (defaults filled in, policies expanded), for the /config endpoint. It holds no secrets:
// rate-limit files have none.
type EffectiveConfig struct {
	Files    []string          `json:"files"`
	Domains  []EffectiveDomain `json:"domains"`
	Policies []EffectiveRule   `json:"policies"`
}

// EffectiveDomain is one domain of an EffectiveConfig.
type EffectiveDomain struct {
	Domain      string                `json:"domain"`
	File        string                `json:"file"`
	FailureMode string                `json:"failure_mode,omitempty"`
	Descriptors []EffectiveDescriptor `json:"descriptors,omitempty"`
}

// EffectiveDescriptor is one descriptor node.
type EffectiveDescriptor struct {
	Key         string                `json:"key"`
	Value       string                `json:"value,omitempty"`
	Path        string                `json:"path"`
	Line        int                   `json:"line"`
	Rule        *EffectiveRule        `json:"rule,omitempty"`
	Descriptors []EffectiveDescriptor `json:"descriptors,omitempty"`
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
		File: r.File, Line: r.Line,
	}
	for i := range r.Limits {
		l := &r.Limits[i]
		el := EffectiveLimit{
			Name: l.Name, Algorithm: l.Algorithm.String(), Unit: l.Unit, UnitMultiplier: l.UnitMultiplier,
			RequestsPerUnit: l.Params.Requests, Period: l.Period().String(), Burst: l.Params.Burst,
		}
		if l.Params.MaxDelay > 0 {
			el.MaxDelay = (time.Duration(l.Params.MaxDelay) * time.Microsecond).String()
		}
		e.Limits = append(e.Limits, el)
	}
	return e
}

func buildEffective(s *Set, doms map[string]*EffectiveDomain) *EffectiveConfig {
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
	return e
}

func quote(s string) string { return strconv.Quote(s) }
func itoa(i int) string     { return strconv.Itoa(i) }
