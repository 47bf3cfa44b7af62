package config

import (
	"sort"
	"strconv"
)

// EffectiveConfig is what Set.Effective returns: the configuration as loaded, resolved
// (defaults filled in, policies expanded), for the /config endpoint. It holds no secrets:
// rate-limit files have none.
type EffectiveConfig struct {
	Files       []string          `json:"files"`
	Domains     []EffectiveDomain `json:"domains"`
	Policies    []RuleView        `json:"policies"`
	DefaultPlan string            `json:"default_plan"`
	Plans       []RuleView        `json:"plans"`
	Penalties   []PenaltyView     `json:"penalties,omitempty"`
	// Adaptive is the factor in force of every adaptive rule: filled by the server when
	// it answers /config (the rest is the configuration as loaded).
	Adaptive []AdaptiveInForce `json:"adaptive,omitempty"`
}

// AdaptiveInForce is an adaptive rule's factor now.
type AdaptiveInForce struct {
	Domain string  `json:"domain"`
	Rule   string  `json:"rule"`
	Path   string  `json:"path"`
	Factor float64 `json:"factor"`
}

// EffectiveExemptions is the exemptions block of a domain, defaults filled in.
type EffectiveExemptions struct {
	Paths         []string         `json:"paths,omitempty"`
	PathKeys      []string         `json:"path_keys"`
	PathMatch     string           `json:"path_match"`
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
	Key   string `json:"key"`
	Value string `json:"value,omitempty"`
	Path  string `json:"path"`
	Line  int    `json:"line"`
	// File is set on the top-level descriptors a merged domain took from a later file
	// (Options.MergeDomains); the others are in the domain's file.
	File string    `json:"file,omitempty"`
	Rule *RuleView `json:"rule,omitempty"`
	// PlanFromValue: the request's value names the plan. Rule is then the fallback
	// (default plan) and PlanRules the rule of every plan, by plan name.
	PlanFromValue bool                  `json:"plan_from_value,omitempty"`
	PlanRules     []RuleView            `json:"plan_rules,omitempty"`
	Descriptors   []EffectiveDescriptor `json:"descriptors,omitempty"`
}

// Effective returns the effective configuration (an EffectiveConfig), JSON-marshalable.
func (s *Set) Effective() any { return s.effective }

// effectiveRule is r's view for the effective configuration.
func effectiveRule(r *Rule) *RuleView {
	v := r.View()
	return &v
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
		// The plan's rule as such, with the quotas as configured: a quota without a
		// time_zone of its own takes the zone of the domain using the plan.
		ep := p.rule.View()
		ep.Name, ep.File, ep.Line, ep.Quotas = n, p.file, p.line, nil
		for _, q := range p.quotas {
			tz := q.locName
			if tz == "" && q.fileLoc != nil {
				tz = q.fileLoc.String()
			}
			ep.Quotas = append(ep.Quotas, QuotaView{Name: q.name, Period: q.period.String(), Requests: q.requests, TimeZone: tz})
		}
		if p.penalty != nil {
			ep.Penalty = p.penalty.Name
		}
		e.Plans = append(e.Plans, ep)
	}
	for _, n := range sortedKeys(penalties) {
		pc := penalties[n]
		ep := pc.pol.View()
		ep.File, ep.Line = pc.file, pc.line
		e.Penalties = append(e.Penalties, ep)
	}
	return e
}

func quote(s string) string { return strconv.Quote(s) }
func itoa(i int) string     { return strconv.Itoa(i) }
