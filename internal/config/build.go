package config

import (
	"cmp"
	"fmt"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/reload"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// PresetFile is the File of the built-in presets' rules.
const PresetFile = "<preset>"

// presets returns the built-in policies, fresh each call (they are plain data).
func presets() []*policyCfg {
	mk := func(name string, alg algorithms.Algorithm, rpu int64, unit string, burst int64) *policyCfg {
		secs, _ := UnitSeconds(unit)
		p := algorithms.Limit{Requests: rpu, Period: secs * int64(time.Second/time.Microsecond)}
		if alg == algorithms.TokenBucket || alg == algorithms.LeakyBucket {
			p.Burst = burst
			if p.Burst == 0 {
				p.Burst = rpu
			}
		}
		return &policyCfg{definition: definition{name: name, file: PresetFile}, ruleFields: ruleFields{limits: []*limitCfg{{lim: Limit{
			Algorithm: alg, Unit: unit, RequestsPerUnit: uint32(rpu), UnitMultiplier: 1, Params: p,
		}}}}}
	}
	return []*policyCfg{
		mk("PUBLIC_API", algorithms.TokenBucket, 100, "minute", 100),
		mk("AUTH_BRUTE_FORCE", algorithms.SlidingWindow, 5, "minute", 0),
		mk("EXPENSIVE_OPERATION", algorithms.TokenBucket, 10, "minute", 2),
		mk("WEBHOOK", algorithms.SlidingWindowCounter, 1000, "minute", 0),
		mk("INTERNAL_SERVICE", algorithms.TokenBucket, 10000, "second", 0),
		mk("STRICT", algorithms.FixedWindow, 10, "minute", 0),
	}
}

// Options change how Parse and Load treat a load. The zero Options is what the server uses.
type Options struct {
	// OnPanic, when set, is told of every panic that decoding or building the
	// configuration recovered from, with the file being decoded ("" while building) and
	// the stack. The panic is still turned into a problem at line 1, column 1, so that a
	// configuration never crashes the server; tests and fuzz targets set OnPanic to fail,
	// because such a problem hides a bug a green run would otherwise not show.
	OnPanic func(file string, recovered any, stack []byte)

	// MaxFileBytes bounds one file, or one pushed document, before it is parsed (parsing
	// takes about 35 times its size in memory); zero means DefaultMaxFileBytes.
	MaxFileBytes int64
	// MaxTotalBytes bounds the files of a directory and the pushed documents together;
	// zero means DefaultMaxTotalBytes.
	MaxTotalBytes int64

	// MergeDomains is the reference's MERGE_DOMAIN_CONFIG: the files (and pushed
	// documents) of one domain are merged, in name order, instead of a domain defined
	// twice being an error. A top-level descriptor defined in two of them is an error
	// naming both, as in the reference; so are domain-level keys (failure_mode,
	// time_zone, exemptions) that two of them set differently.
	MergeDomains bool

	// testHook, when set, is called with the field path of every mapping key before the
	// key is decoded, and with building true before the decoded files are built into a
	// Set: tests inject a panic through it.
	testHook func(field string, building bool)
}

// Caps on what is parsed, and the binary's flags that raise them (named in the error).
const (
	DefaultMaxFileBytes  = 4 << 20
	DefaultMaxTotalBytes = 16 << 20
	FlagMaxFileBytes     = "--max-config-bytes"
	FlagMaxTotalBytes    = "--max-config-total-bytes"
)

func (o Options) maxFile() int64 {
	if o.MaxFileBytes > 0 {
		return o.MaxFileBytes
	}
	return DefaultMaxFileBytes
}

func (o Options) maxTotal() int64 {
	if o.MaxTotalBytes > 0 {
		return o.MaxTotalBytes
	}
	return DefaultMaxTotalBytes
}

// oversized returns a problem for each document above the per-file cap and one for the
// documents together above the total cap: no document is parsed while there is one.
func (o Options) oversized(files map[string][]byte, names []string) []Problem {
	var problems []Problem
	var total int64
	for _, n := range names {
		size := int64(len(files[n]))
		total += size
		if size > o.maxFile() {
			tl := &reload.TooLargeError{Path: n, Size: size, Max: o.maxFile(), Flag: FlagMaxFileBytes}
			problems = append(problems, Problem{File: n, Line: 1, Column: 1, Msg: tl.Reason()})
		}
	}
	if problems == nil && total > o.maxTotal() && len(names) > 0 {
		tl := &reload.TooLargeError{Size: total, Max: o.maxTotal(), Flag: FlagMaxTotalBytes}
		problems = append(problems, Problem{File: names[0], Line: 1, Column: 1,
			Msg: fmt.Sprintf("the %d configuration documents together are %s", len(names), tl.Reason())})
	}
	return problems
}

// Parse validates and builds a Set from file contents (name -> content), exactly as Load
// does for the files it reads. On failure the error is a *LoadError.
func Parse(files map[string][]byte) (*Set, error) { return Options{}.Parse(files) }

// Parse is the package's Parse with o's options.
func (o Options) Parse(files map[string][]byte) (s *Set, err error) {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	defer func() {
		if r := recover(); r != nil {
			o.panicked("", r)
			file := "<configuration>"
			if len(names) > 0 {
				file = names[0]
			}
			s, err = nil, &LoadError{Problems: []Problem{{File: file, Line: 1, Column: 1,
				Msg: fmt.Sprintf("cannot build the configuration: %v (a bug in halt-envoy: please report it with the files)", r)}}}
		}
	}()

	if p := o.oversized(files, names); p != nil {
		return nil, &LoadError{Problems: p}
	}
	var problems, dropped []Problem
	var cfgs []*fileCfg
	t := newTables()
	for _, name := range names {
		d := &decoder{file: name, opts: &o, tables: t}
		fc := d.decodeFile(files[name])
		problems = append(problems, d.problems...)
		if d.dropped > 0 {
			last := d.problems[len(d.problems)-1]
			dropped = append(dropped, Problem{File: name, Line: last.Line, Column: last.Column,
				Msg: fmt.Sprintf("and %d more problems in this file, not shown", d.dropped)})
		}
		if fc != nil {
			cfgs = append(cfgs, fc)
		}
	}
	if o.testHook != nil {
		o.testHook("", true)
	}
	b := &builder{
		merge:       o.MergeDomains,
		penaltyDefs: map[string]*penaltyCfg{},
		set: &Set{
			domains:     map[string]*domain{},
			policies:    map[string]*Rule{},
			plans:       map[string]*planDef{},
			defaultPlan: DefaultPlanName,
			files:       names,
		},
	}
	b.policies(cfgs)
	b.penalties(cfgs)
	b.plans(cfgs)
	b.domains(cfgs)
	problems = append(problems, b.problems...)
	if len(problems) > 0 {
		e := &LoadError{Problems: problems}
		e.sort()
		e.Problems = append(e.Problems, dropped...)
		return nil, e
	}
	s = b.set
	for n := range s.domains {
		s.names = append(s.names, n)
	}
	sort.Strings(s.names)
	s.effective = buildEffective(s, b.effDomains, b.penaltyDefs)
	s.penalties = make(map[string]*PenaltyPolicy, len(b.penaltyDefs))
	for name, pc := range b.penaltyDefs {
		s.penalties[name] = pc.pol
	}
	return s, nil
}

// panicked tells o.OnPanic, if set, of a recovered panic.
func (o *Options) panicked(file string, r any) {
	if o.OnPanic != nil {
		o.OnPanic(file, r, debug.Stack())
	}
}

type builder struct {
	merge      bool // Options.MergeDomains
	set        *Set
	problems   []Problem
	effDomains map[string]*EffectiveDomain
	// penaltyDefs are the valid penalties; penaltyNames and planNames every defined name
	// (valid or not), so that a reference to an invalid one is not reported as unknown.
	penaltyDefs  map[string]*penaltyCfg
	penaltyNames map[string]*penaltyCfg
	planNames    map[string]*planCfg
	planRules    int // prebuilt plan_from_value rules so far
}

func (b *builder) add(file string, line, col int, field, msg string) {
	if line <= 0 {
		line, col = 1, 1
	}
	b.problems = append(b.problems, Problem{File: file, Line: line, Column: col, Field: field, Msg: msg})
}

// unique gathers one kind of named definition from every file, reporting a name
// defined twice (naming both places) and keeping the first.
func unique[T interface{ def() *definition }](b *builder, cfgs []*fileCfg, of func(*fileCfg) []T, section, what string) map[string]T {
	defined := map[string]T{}
	for _, fc := range cfgs {
		for _, c := range of(fc) {
			d := c.def()
			if first, dup := defined[d.name]; dup {
				f := first.def()
				b.add(d.file, d.line, d.col, section+"."+d.name,
					what+" "+quote(d.name)+" is defined twice: in "+f.file+" (line "+itoa(f.line)+") and in "+d.file)
				continue
			}
			defined[d.name] = c
		}
	}
	return defined
}

func (b *builder) policies(cfgs []*fileCfg) {
	defined := unique(b, cfgs, func(fc *fileCfg) []*policyCfg { return fc.policies }, "policies", "policy")
	for _, pc := range presets() {
		if _, overridden := defined[pc.name]; !overridden {
			defined[pc.name] = pc
		}
	}
	for name, pc := range defined {
		r := &Rule{
			Name:                   name,
			Path:                   "policy " + name,
			Policy:                 name,
			ShadowMode:             pc.shadow,
			FailureMode:            pc.failureMode,
			AllowAlgorithmOverride: pc.allowOverride,
			Cost:                   1,
			File:                   pc.file,
			Line:                   pc.line,
			IdentitySkip:           -1,
		}
		b.fillLimits(r, pc.limits)
		if r.FailureMode == "" {
			r.FailureMode = limitsFailureMode(pc.limits)
		}
		r.Charges = pc.charges.charges()
		if !b.checkDebt(r, &pc.charges, pc.file, "policies."+name, pc.line, 1) {
			continue
		}
		b.set.policies[name] = r
	}
}

// limitsFailureMode folds the failure_mode of several limits: the strictest one wins
// (error > deny > allow).
// ruleLimits fills r's limits from rf: from its policy, which must exist, or from its
// own rate limits. field, line and col place a message about an unknown policy (line
// and col when the policy's own node is missing). It reports false when the policy is
// unknown; that is reported.
func (b *builder) ruleLimits(r *Rule, rf *ruleFields, file, field string, line, col int) bool {
	if rf.policy == "" {
		b.fillLimits(r, rf.limits)
		if r.FailureMode == "" {
			r.FailureMode = limitsFailureMode(rf.limits)
		}
		return true
	}
	p, ok := b.set.policies[rf.policy]
	if !ok {
		if rf.policyNode != nil {
			line, col = rf.policyNode.Line, rf.policyNode.Column
		}
		b.add(file, line, col, field+".policy", "unknown policy "+quote(rf.policy)+" (define it under policies: or use a preset: "+strings.Join(presetNames(), ", ")+")")
		return false
	}
	r.Policy = rf.policy
	r.Limits = p.Limits
	r.Unlimited = p.Unlimited
	r.Charges = rf.charges.resolve(r.Charges, p.Charges)
	r.Replaces = append(r.Replaces, p.Replaces...)
	r.ShadowMode = r.ShadowMode || p.ShadowMode
	r.AllowAlgorithmOverride = r.AllowAlgorithmOverride || p.AllowAlgorithmOverride
	if r.FailureMode == "" {
		r.FailureMode = p.FailureMode
	}
	return true
}

func limitsFailureMode(ls []*limitCfg) FailureMode {
	var fm FailureMode
	for _, l := range ls {
		if rank(l.failureMode) > rank(fm) {
			fm = l.failureMode
		}
	}
	return fm
}

func rank(f FailureMode) int {
	switch f {
	case FailAllow:
		return 1
	case FailDeny:
		return 2
	case FailError:
		return 3
	}
	return 0
}

func (b *builder) fillLimits(r *Rule, ls []*limitCfg) {
	for _, l := range ls {
		if l.unlimited {
			r.Unlimited = true
		} else {
			r.Limits = append(r.Limits, l.lim)
		}
		r.Replaces = append(r.Replaces, l.replaces...)
	}
	if r.Unlimited {
		r.Limits = nil
	}
}

func (b *builder) domains(cfgs []*fileCfg) {
	b.effDomains = map[string]*EffectiveDomain{}
	for _, fc := range cfgs {
		if fc.domain == "" {
			continue
		}
		if first, dup := b.set.domains[fc.domain]; dup {
			line, col := 1, 1
			if fc.domainNode != nil {
				line, col = fc.domainNode.Line, fc.domainNode.Column
			}
			if b.merge {
				b.mergeDomain(first, fc, line, col)
				continue
			}
			b.add(fc.name, line, col, "domain",
				"duplicate domain "+quote(fc.domain)+": defined in "+first.file+" and in "+fc.name+" (MERGE_DOMAIN_CONFIG or --merge-domains merges them)")
			continue
		}
		line := 1
		if fc.domainNode != nil {
			line = fc.domainNode.Line
		}
		d := &domain{name: fc.domain, file: fc.name, line: line, failureMode: fc.failureMode, loc: fc.timeZone, exempt: fc.exempt}
		b.set.domains[fc.domain] = d
		ed := &EffectiveDomain{Domain: fc.domain, File: fc.name, FailureMode: string(fc.failureMode), TimeZone: fc.timeZoneName, Exemptions: fc.exemptEff}
		if ed.TimeZone == "" {
			ed.TimeZone = "UTC"
		}
		b.effDomains[fc.domain] = ed
		ed.Descriptors = b.level(d, &d.root, fc.descriptors, nil, nil)
	}
}

// mergeDomain adds the descriptors of fc, a later file of domain d, to d (Options.MergeDomains),
// as the reference's MERGE_DOMAIN_CONFIG patches a domain: every top-level descriptor of
// fc must be new to d, and fc's domain-level keys must agree with those already given.
// The rules keep their own file.
func (b *builder) mergeDomain(d *domain, fc *fileCfg, line, col int) {
	ed := b.effDomains[d.name]
	conflict := func(key, first, second string) {
		b.add(fc.name, line, col, key, "domain "+quote(d.name)+" is merged from "+d.file+" and "+fc.name+", which set "+key+" differently ("+first+", "+second+")")
	}
	ok := true
	// The domain's failure_mode and time_zone shape the rules of every file (a rule
	// without its own failure mode takes the domain's, quotas take its zone), so every
	// file must say the same; exemptions are looked up per call and may come from one.
	if fc.failureMode != d.failureMode {
		conflict("failure_mode", cmp.Or(string(d.failureMode), "none"), cmp.Or(string(fc.failureMode), "none"))
		ok = false
	}
	if name := cmp.Or(fc.timeZoneName, "UTC"); name != ed.TimeZone {
		conflict("time_zone", ed.TimeZone, name)
		ok = false
	}
	if fc.exempt != nil && d.exempt != nil {
		b.add(fc.name, line, col, "exemptions", "domain "+quote(d.name)+" is merged from "+d.file+" and "+fc.name+", which both have exemptions: give them in one file")
		ok = false
	}
	for _, dc := range fc.descriptors {
		for _, have := range ed.Descriptors {
			if have.Key == dc.key && have.Value == dc.value {
				what := dc.key
				if dc.value != "" {
					what += "=" + dc.value
				}
				file := have.File
				if file == "" {
					file = d.file
				}
				b.add(fc.name, dc.line, dc.col, dc.field, "duplicate descriptor "+quote(what)+" in merged domain "+quote(d.name)+" (first defined in "+file+", line "+itoa(have.Line)+")")
				ok = false
			}
		}
	}
	if !ok {
		return
	}
	if d.exempt == nil && fc.exempt != nil {
		d.exempt, ed.Exemptions = fc.exempt, fc.exemptEff
	}
	part := &domain{name: d.name, file: fc.name, line: line, failureMode: d.failureMode, loc: d.loc, exempt: d.exempt}
	added := b.level(part, &d.root, fc.descriptors, nil, nil)
	for i := range added {
		added[i].File = fc.name
	}
	ed.Descriptors = append(ed.Descriptors, added...)
}

// level builds the children of parent from descs; levels and names are the path so far.
func (b *builder) level(d *domain, parent *node, descs []*descCfg, levels []Level, names []string) []EffectiveDescriptor {
	var eff []EffectiveDescriptor
	for _, dc := range descs {
		n := &node{}
		lv := Level{Key: dc.key, Value: dc.value, ShareThreshold: dc.shareThreshold, ValueToMetric: dc.valueToMetric}
		finalKey := dc.key
		if dc.value != "" {
			finalKey += "_" + dc.value
		}
		switch {
		case strings.Contains(dc.value, "*"):
			lv.Wildcard = true
			parent.wild = append(parent.wild, wildNode{key: dc.key, value: dc.value, n: n})
		case dc.value == "" && strings.Contains(dc.key, "*"):
			lv.Wildcard = true
			parent.wild = append(parent.wild, wildNode{key: dc.key, keyGlob: true, n: n})
		case dc.value == "":
			if parent.keys == nil {
				parent.keys = map[string]*node{}
			}
			parent.keys[dc.key] = n
		default:
			if parent.exact == nil {
				parent.exact = map[Entry]*node{}
			}
			parent.exact[Entry{dc.key, dc.value}] = n
		}
		parent.nchild++
		myLevels := append(append([]Level(nil), levels...), lv)
		myNames := append(append([]string(nil), names...), finalKey)
		ed := EffectiveDescriptor{Key: dc.key, Value: dc.value, Path: pathOf(myLevels), Line: dc.line}
		if r := b.rule(d, dc, n, myLevels, myNames); r != nil {
			n.rule = r
			ed.Rule = effectiveRule(r)
			ed.PlanFromValue = n.planRules != nil
			for _, name := range sortedKeys(n.planRules) {
				ed.PlanRules = append(ed.PlanRules, *effectiveRule(n.planRules[name]))
			}
		}
		ed.Descriptors = b.level(d, n, dc.children, myLevels, myNames)
		eff = append(eff, ed)
	}
	return eff
}

func pathOf(levels []Level) string {
	var sb strings.Builder
	for i, l := range levels {
		if i > 0 {
			sb.WriteByte('/')
		}
		sb.WriteString(l.Key)
		if l.Value != "" {
			sb.WriteByte('=')
			sb.WriteString(l.Value)
		}
	}
	return sb.String()
}

func (b *builder) rule(d *domain, dc *descCfg, n *node, levels []Level, names []string) *Rule {
	hasPlan := dc.plan != "" || dc.planFromValue
	if len(dc.limits) == 0 && dc.policy == "" && !hasPlan && len(dc.quotas) == 0 {
		if dc.penalty != "" {
			b.add(d.file, dc.penaltyNode.Line, dc.penaltyNode.Column, dc.field+".penalty", "a penalty needs something to violate: rate_limit, rate_limits, policy, plan or quotas on the same descriptor")
		}
		return nil
	}
	r := &Rule{
		Domain:                 d.name,
		Name:                   strings.Join(names, "."),
		Path:                   pathOf(levels),
		ShadowMode:             dc.shadow,
		QuotaMode:              dc.quotaMode,
		Metadata:               dc.metadata,
		DetailedMetric:         dc.detailed,
		Cost:                   dc.cost,
		FailureMode:            dc.failureMode,
		AllowAlgorithmOverride: dc.allowOverride,
		Levels:                 levels,
		File:                   d.file,
		Line:                   dc.line,
		IdentitySkip:           -1,
		Quotas:                 resolveQuotas(dc.quotas, d.loc),
		Adaptive:               dc.adaptive,
		Charges:                dc.charges.charges(),
	}
	if dc.penaltyNode != nil {
		pol, ok := b.penaltyRef(d.file, dc.penalty, dc.penaltyNode.Line, dc.penaltyNode.Column, dc.field+".penalty")
		if !ok {
			return nil
		}
		r.Penalty = pol
	}
	if hasPlan {
		return b.planNode(d, dc, n, r, names)
	}
	if !b.ruleLimits(r, &dc.ruleFields, d.file, dc.field, dc.line, dc.col) {
		return nil
	}
	if dc.policy == "" && len(dc.limits) == 1 && dc.limits[0].lim.Name != "" {
		r.Name = dc.limits[0].lim.Name
	}
	if !b.checkDebt(r, &dc.charges, d.file, dc.field, dc.line, dc.col) {
		return nil
	}
	r.Replaces = append(r.Replaces, dc.replaces...)
	if r.FailureMode == "" {
		r.FailureMode = d.failureMode
	}
	if r.Unlimited && (len(r.Quotas) > 0 || r.Penalty != nil) {
		b.add(d.file, dc.line, dc.col, dc.field, "an unlimited descriptor cannot have quotas or a penalty")
		return nil
	}
	if r.Adaptive != nil {
		if r.Unlimited {
			b.add(d.file, dc.adaptiveNode.Line, dc.adaptiveNode.Column, dc.field+".adaptive", "an unlimited descriptor has no limit to scale")
			return nil
		}
		b.set.adaptive = append(b.set.adaptive, r)
	}
	return r
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func presetNames() []string {
	var out []string
	for _, p := range presets() {
		out = append(out, p.name)
	}
	return out
}
