package config

import (
	"sort"
	"strings"
	"time"
)

// MaxPlanRules bounds the rules prebuilt for plan_from_value descriptors (one per plan
// per such descriptor), so that a hostile configuration cannot exhaust the server.
const MaxPlanRules = 100000

// penalties collects penalties: across files; names are unique.
func (b *builder) penalties(cfgs []*fileCfg) {
	defined := unique(b, cfgs, func(fc *fileCfg) []*penaltyCfg { return fc.penalties }, "penalties", "penalty")
	for name, pc := range defined {
		if pc.pol != nil {
			b.penaltyDefs[name] = pc
		}
	}
	b.penaltyNames = defined
}

// penaltyRef resolves a penalty name used in file at n; ok is false when it is unknown
// (reported) or invalid (reported where it is defined).
func (b *builder) penaltyRef(file, name string, line, col int, field string) (*PenaltyPolicy, bool) {
	if name == "" {
		return nil, true
	}
	if pc := b.penaltyDefs[name]; pc != nil {
		return pc.pol, true
	}
	if _, defined := b.penaltyNames[name]; !defined {
		b.add(file, line, col, field, "unknown penalty "+quote(name)+" (define it under penalties:)")
	}
	return nil, false
}

// plans collects plans: across files (names unique; a plan of a built-in's name replaces
// it), resolves their policies and penalties, and checks default_plan.
func (b *builder) plans(cfgs []*fileCfg) {
	defined := unique(b, cfgs, func(fc *fileCfg) []*planCfg { return fc.plans }, "plans", "plan")
	for _, p := range builtinPlans() {
		if _, overridden := defined[p.name]; !overridden {
			b.set.plans[p.name] = p
		}
	}
	for name, pc := range defined {
		if pc.empty {
			continue // reported by the decoder
		}
		r := &Rule{
			Name: name, Path: "plan " + name, Plan: name, Cost: 1,
			ShadowMode: pc.shadow, FailureMode: pc.failureMode, AllowAlgorithmOverride: pc.allowOverride,
			File: pc.file, Line: pc.line, IdentitySkip: -1, Charges: pc.charges.charges(),
		}
		if !b.ruleLimits(r, &pc.ruleFields, pc.file, "plans."+name, pc.line, 1) {
			continue
		}
		if !b.checkDebt(r, &pc.charges, pc.file, "plans."+name, pc.line, 1) {
			continue
		}
		pd := &planDef{name: name, file: pc.file, line: pc.line, rule: r, quotas: pc.quotas}
		if pc.penaltyNode != nil {
			pol, ok := b.penaltyRef(pc.file, pc.penalty, pc.penaltyNode.Line, pc.penaltyNode.Column, "plans."+name+".penalty")
			if !ok {
				continue
			}
			pd.penalty = pol
		}
		if r.Unlimited && (len(pd.quotas) > 0 || pd.penalty != nil) {
			b.add(pc.file, pc.line, pc.col, "plans."+name, "an unlimited plan cannot have quotas or a penalty")
			continue
		}
		b.set.plans[name] = pd
	}
	b.planNames = defined

	// default_plan: any file may set it; all that do must agree.
	var first *fileCfg
	for _, fc := range cfgs {
		if fc.defaultPlanNode == nil || fc.defaultPlan == "" {
			continue
		}
		n := fc.defaultPlanNode
		if first != nil && first.defaultPlan != fc.defaultPlan {
			b.add(fc.name, n.Line, n.Column, "default_plan",
				"default_plan "+quote(fc.defaultPlan)+" differs from default_plan "+quote(first.defaultPlan)+" in "+first.name+": the default plan is one for all files")
			continue
		}
		if !b.planKnown(fc.defaultPlan) {
			b.add(fc.name, n.Line, n.Column, "default_plan", "unknown plan "+quote(fc.defaultPlan)+" ("+b.planHint()+")")
			continue
		}
		if first == nil {
			first = fc
			b.set.defaultPlan = fc.defaultPlan
		}
	}
}

// planKnown reports whether name is a built-in or configured plan (valid or not).
func (b *builder) planKnown(name string) bool {
	if _, ok := b.set.plans[name]; ok {
		return true
	}
	_, ok := b.planNames[name]
	return ok
}

func (b *builder) planHint() string {
	names := map[string]bool{}
	for n := range b.set.plans {
		names[n] = true
	}
	for n := range b.planNames {
		names[n] = true
	}
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, n)
	}
	sort.Strings(out)
	if len(out) > 12 {
		out = append(out[:12], "...")
	}
	return "define it under plans: or use one of " + strings.Join(out, ", ")
}

// resolveQuotas gives qs their time zone: their own, else their file's, else the
// domain's, else UTC.
func resolveQuotas(qs []*quotaCfg, domainLoc *time.Location) []Quota {
	if len(qs) == 0 {
		return nil
	}
	out := make([]Quota, 0, len(qs))
	for _, q := range qs {
		loc := q.loc
		if loc == nil {
			loc = q.fileLoc
		}
		if loc == nil {
			loc = domainLoc
		}
		if loc == nil {
			loc = time.UTC
		}
		out = append(out, Quota{Name: q.name, Period: q.period, Requests: q.requests, Location: loc})
	}
	return out
}

// planRule builds the rule of descriptor dc for plan p on top of base (the descriptor's
// own settings, quotas and penalty). ok is false when the combination is invalid
// (reported).
func (b *builder) planRule(d *domain, dc *descCfg, base *Rule, names []string, p *planDef) (*Rule, bool) {
	r := *base
	pr := p.rule
	r.Name = strings.Join(names, ".") + ":" + p.name
	r.Plan = p.name
	r.Policy = pr.Policy
	r.Limits = pr.Limits
	r.Unlimited = pr.Unlimited
	r.Replaces = append(append([]string(nil), pr.Replaces...), dc.replaces...)
	r.ShadowMode = dc.shadow || pr.ShadowMode
	r.AllowAlgorithmOverride = dc.allowOverride || pr.AllowAlgorithmOverride
	r.Charges = dc.charges.resolve(base.Charges, pr.Charges)
	if !b.checkDebt(&r, &dc.charges, d.file, dc.field, dc.line, dc.col) {
		return nil, false
	}
	r.FailureMode = dc.failureMode
	if r.FailureMode == "" {
		r.FailureMode = pr.FailureMode
	}
	if r.FailureMode == "" {
		r.FailureMode = d.failureMode
	}
	if planQ := resolveQuotas(p.quotas, d.loc); len(planQ) > 0 {
		own := len(base.Quotas)
		r.Quotas = append(append(make([]Quota, 0, own+len(planQ)), base.Quotas...), planQ...)
		for _, pq := range planQ {
			for _, oq := range base.Quotas {
				if oq.Name == pq.Name {
					b.add(d.file, dc.line, dc.col, dc.field+".quotas", "quota "+quote(oq.Name)+" is also a quota of plan "+quote(p.name)+": give this descriptor's quota another name")
					return nil, false
				}
			}
		}
	}
	if r.Penalty == nil {
		r.Penalty = p.penalty
	}
	if r.Unlimited && (len(r.Quotas) > 0 || r.Penalty != nil) {
		b.add(d.file, dc.line, dc.col, dc.field, "plan "+quote(p.name)+" is unlimited: this descriptor cannot add quotas or a penalty to it")
		return nil, false
	}
	return &r, true
}

// planNode fills the rules of a descriptor with plan or plan_from_value. base carries
// the descriptor's own settings; IdentitySkip is set here.
func (b *builder) planNode(d *domain, dc *descCfg, n *node, base *Rule, names []string) *Rule {
	if dc.plan != "" {
		p, ok := b.set.plans[dc.plan]
		if !ok {
			if _, defined := b.planNames[dc.plan]; !defined {
				b.add(d.file, dc.planNode.Line, dc.planNode.Column, dc.field+".plan", "unknown plan "+quote(dc.plan)+" ("+b.planHint()+")")
			}
			return nil
		}
		r, _ := b.planRule(d, dc, base, names, p)
		return r
	}
	base.IdentitySkip = len(base.Levels) - 1
	b.planRules += len(b.set.plans)
	if b.planRules > MaxPlanRules {
		b.add(d.file, dc.line, dc.col, dc.field+".plan_from_value", "too many plan_from_value descriptors: each holds a rule per plan, and the configuration would hold more than "+itoa(MaxPlanRules))
		return nil
	}
	n.planRules = make(map[string]*Rule, len(b.set.plans))
	for name, p := range b.set.plans {
		r, ok := b.planRule(d, dc, base, names, p)
		if !ok {
			return nil
		}
		n.planRules[name] = r
	}
	def := n.planRules[b.set.defaultPlan]
	if def == nil {
		return nil // the default plan is invalid: reported
	}
	fb := *def
	fb.PlanFallback = true
	return &fb
}
