package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// Bounds on one file, so that a broken or hostile file cannot exhaust the server.
const (
	// MaxDepth is how deeply descriptors may nest.
	MaxDepth = 32
	// MaxDescriptors is how many descriptors one file may define (aliases count each use).
	MaxDescriptors = 10000
	// MaxKeyLen bounds descriptor keys and values, domain and policy names, in bytes.
	MaxKeyLen = 1024
)

// UnitSeconds returns the length of a rate-limit unit as the reference service's
// UnitToDivider defines it (a month is 30 days, a year 365), and whether unit is known.
// Limit overrides sent by Envoy use the same table as configuration files.
func UnitSeconds(unit string) (int64, bool) {
	switch unit {
	case "second":
		return 1, true
	case "minute":
		return 60, true
	case "hour":
		return 60 * 60, true
	case "day":
		return 60 * 60 * 24, true
	case "week":
		return 60 * 60 * 24 * 7, true
	case "month":
		return 60 * 60 * 24 * 30, true
	case "year":
		return 60 * 60 * 24 * 365, true
	}
	return 0, false
}

// ---- decoded, not yet resolved, configuration ----

type fileCfg struct {
	name        string
	domain      string
	domainNode  *yaml.Node
	failureMode FailureMode
	descriptors []*descCfg
	policies    []*policyCfg

	// The SaaS keys (saas_decode.go).
	timeZone        *time.Location // nil when time_zone is not set
	timeZoneName    string
	defaultPlan     string
	defaultPlanNode *yaml.Node
	plans           []*planCfg
	penalties       []*penaltyCfg
	exempt          *exemptions
	exemptEff       *EffectiveExemptions
}

type limitCfg struct {
	lim         Limit
	unlimited   bool
	replaces    []string
	failureMode FailureMode
	line        int
}

// ruleFields are the keys a descriptor, a plan and a policy share, decoded by one switch
// (ruleField) and checked by one function (checkRuleFields). A policy takes only the
// limit keys; descriptors and plans also take policy, quota, quotas and penalty.
type ruleFields struct {
	limits        []*limitCfg
	policy        string
	policyNode    *yaml.Node
	quotas        []*quotaCfg
	penalty       string
	penaltyNode   *yaml.Node
	shadow        bool
	failureMode   FailureMode
	allowOverride bool

	// The keys as written, for the checks of keys that exclude each other.
	rlNode, rlsNode, quotaNode, quotasNode *yaml.Node
}

// ruleKeys says which shared keys an entry takes.
type ruleKeys struct {
	// saas adds policy, quota, quotas and penalty to rate_limit, rate_limits,
	// shadow_mode, failure_mode and allow_algorithm_override.
	saas bool
	// nullLimit lets "rate_limit:" stand empty, as reference descriptors may.
	nullLimit bool
}

type descCfg struct {
	ruleFields
	key, value     string
	line, col      int
	field          string
	detailed       bool
	valueToMetric  bool
	shareThreshold bool
	replaces       []string
	cost           int64
	children       []*descCfg

	// The SaaS keys (saas_decode.go).
	plan          string
	planNode      *yaml.Node
	planFromValue bool
}

type policyCfg struct {
	definition
	ruleFields
}

// ---- the decoder of one file ----

type decoder struct {
	file     string
	opts     *Options
	problems []Problem
	ndesc    int
	tooMany  bool
	dropped  int // problems past maxProblems
	// quotas are every quota decoded in the file: their fileLoc is set once the file's
	// time_zone is known.
	quotas []*quotaCfg
}

// maxProblems bounds the problems reported for one file: past it they are noise.
const maxProblems = 100

func (d *decoder) add(n *yaml.Node, field, format string, args ...any) {
	if len(d.problems) >= maxProblems {
		d.dropped++
		return
	}
	line, col := 1, 1
	if n != nil && n.Line > 0 {
		line, col = n.Line, n.Column
	}
	d.problems = append(d.problems, Problem{File: d.file, Line: line, Column: col, Field: field, Msg: fmt.Sprintf(format, args...)})
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlProblem turns a yaml.v3 parse error into a Problem (it knows the line, not the column).
func (d *decoder) yamlProblem(err error) {
	line := 1
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	d.problems = append(d.problems, Problem{File: d.file, Line: line, Column: 1, Msg: "malformed YAML: " + msg})
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

type pair struct {
	key string
	k   *yaml.Node
	v   *yaml.Node
}

// fields returns the pairs of mapping n, with merge keys (<<) expanded and duplicate keys
// reported. A non-mapping n is reported and yields nothing.
func (d *decoder) fields(n *yaml.Node, field string) []pair {
	return d.fieldsMerging(n, field, nil)
}

// fieldsMerging is fields with the chain of mappings being merged into, so that a merge
// key that refers back to its own mapping is an error, not an endless recursion.
func (d *decoder) fieldsMerging(n *yaml.Node, field string, chain []*yaml.Node) []pair {
	n = deref(n)
	for _, c := range chain {
		if c == n {
			d.add(n, field, "merge key (<<) refers to a mapping that contains it")
			return nil
		}
	}
	if len(chain) > 16 {
		d.add(n, field, "merge keys (<<) nest deeper than 16 levels")
		return nil
	}
	if n == nil || n.Kind != yaml.MappingNode {
		d.add(n, field, "must be a mapping, got %s", kindName(n))
		return nil
	}
	var out, merged []pair
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Value == "<<" && (k.Tag == "" || k.Tag == "!" || k.ShortTag() == "!!merge") {
			merged = append(merged, d.mergePairs(v, field, append(chain, n))...)
			continue
		}
		k = deref(k)
		if k == nil || k.Kind != yaml.ScalarNode {
			d.add(k, field, "keys must be strings, got %s", kindName(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.add(k, join(field, k.Value), "duplicate key (first at line %d)", first.Line)
			continue
		}
		seen[k.Value] = k
		if d.opts.testHook != nil {
			d.opts.testHook(join(field, k.Value), false)
		}
		out = append(out, pair{k.Value, k, v})
	}
	for _, p := range merged {
		if _, ok := seen[p.key]; !ok {
			seen[p.key] = p.k
			out = append(out, p)
		}
	}
	return out
}

func (d *decoder) mergePairs(v *yaml.Node, field string, chain []*yaml.Node) []pair {
	v = deref(v)
	if v != nil && v.Kind == yaml.SequenceNode {
		var out []pair
		for _, m := range v.Content {
			out = append(out, d.fieldsMerging(m, field, chain)...)
		}
		return out
	}
	return d.fieldsMerging(v, field, chain)
}

func kindName(n *yaml.Node) string {
	if n == nil {
		return "nothing"
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!int":
			return "an integer (" + n.Value + ")"
		case "!!bool":
			return "a boolean (" + n.Value + ")"
		case "!!float":
			return "a number (" + n.Value + ")"
		}
		return strconv.Quote(n.Value)
	}
	return "an unexpected YAML node"
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

func (d *decoder) str(n *yaml.Node, field string) string {
	n = deref(n)
	if isNull(n) {
		return ""
	}
	if n.Kind != yaml.ScalarNode {
		d.add(n, field, "must be a string, got %s", kindName(n))
		return ""
	}
	// Like the reference (yaml.v2), a number or boolean is taken as its text: value: 404.
	return n.Value
}

func (d *decoder) integer(n *yaml.Node, field string) (int64, bool) {
	n = deref(n)
	if n == nil || n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		d.add(n, field, "must be an integer, got %s", kindName(n))
		return 0, false
	}
	var v int64
	if err := n.Decode(&v); err != nil {
		d.add(n, field, "must be an integer that fits in 64 bits, got %s", n.Value)
		return 0, false
	}
	return v, true
}

func (d *decoder) boolean(n *yaml.Node, field string) bool {
	n = deref(n)
	if isNull(n) {
		return false
	}
	if n != nil && n.Kind == yaml.ScalarNode {
		if n.ShortTag() == "!!bool" {
			var b bool
			if n.Decode(&b) == nil {
				return b
			}
		}
		if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) == 0 {
			// YAML 1.1 booleans, which the reference's yaml.v2 accepts.
			switch strings.ToLower(n.Value) {
			case "yes", "on", "y":
				return true
			case "no", "off", "n":
				return false
			}
		}
	}
	d.add(n, field, "must be true or false, got %s", kindName(n))
	return false
}

func (d *decoder) duration(n *yaml.Node, field string) (time.Duration, bool) {
	n = deref(n)
	if n == nil || n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		d.add(n, field, "must be a duration such as 500ms, 90s or 1h, got %s", kindName(n))
		return 0, false
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		d.add(n, field, "must be a duration such as 500ms, 90s or 1h, got %q", n.Value)
		return 0, false
	}
	return v, true
}

func (d *decoder) failureMode(n *yaml.Node, field string) FailureMode {
	s := d.str(n, field)
	switch FailureMode(s) {
	case FailAllow, FailDeny, FailError:
		return FailureMode(s)
	}
	d.add(n, field, "unknown failure_mode %q (want allow, deny or error)", s)
	return ""
}

func (d *decoder) name(n *yaml.Node, field, what string) string {
	s := d.str(n, field)
	if len(s) > MaxKeyLen {
		d.add(n, field, "%s is %d bytes long; the limit is %d", what, len(s), MaxKeyLen)
	}
	return s
}

// limitError returns err, an error of algorithms.Limit.Validate, as the *LimitError it is.
func limitError(err error) *algorithms.LimitError {
	var le *algorithms.LimitError
	if errors.As(err, &le) {
		return le
	}
	return &algorithms.LimitError{Msg: err.Error()}
}

func (d *decoder) unknown(p pair, field, valid string) {
	d.add(p.k, join(field, p.key), "unknown key (valid here: %s)", valid)
}

// ---- file ----

func (d *decoder) decodeFile(data []byte) (fc *fileCfg) {
	defer func() {
		if r := recover(); r != nil {
			d.opts.panicked(d.file, r)
			// Past maxProblems too: this problem must never be dropped.
			d.problems = append(d.problems, Problem{File: d.file, Line: 1, Column: 1,
				Msg: fmt.Sprintf("cannot parse file: %v (a bug in halt-envoy: please report it with the file)", r)})
			fc = nil
		}
	}()
	if len(bytes.TrimSpace(data)) == 0 {
		d.add(nil, "", "empty file (a rate-limit file needs at least a domain)")
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			d.add(nil, "", "empty file (a rate-limit file needs at least a domain)")
		} else {
			d.yamlProblem(err)
		}
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		d.add(&extra, "", "a file must hold exactly one YAML document (found another after ---); put each domain in its own file")
		return nil
	} else if !errors.Is(err, io.EOF) {
		d.yamlProblem(err)
		return nil
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			d.add(nil, "", "empty file (a rate-limit file needs at least a domain)")
			return nil
		}
		root = root.Content[0]
	}
	if isNull(deref(root)) {
		d.add(root, "", "empty file (a rate-limit file needs at least a domain)")
		return nil
	}
	fc = &fileCfg{name: d.file}
	const valid = "domain, descriptors, policies, failure_mode, time_zone, default_plan, plans, penalties, exemptions"
	var descNode, exemptNode *yaml.Node
	for _, p := range d.fields(root, "") {
		switch p.key {
		case "domain":
			fc.domain = d.name(p.v, "domain", "domain")
			fc.domainNode = p.v
		case "descriptors":
			descNode = p.v
		case "policies":
			fc.policies = d.policies(p.v, "policies")
		case "failure_mode":
			fc.failureMode = d.failureMode(p.v, "failure_mode")
		case "time_zone":
			fc.timeZoneName, fc.timeZone = d.timeZone(p.v, "time_zone")
		case "default_plan":
			fc.defaultPlan = d.ref(p.v, "default_plan", "plan name", "must name a plan")
			fc.defaultPlanNode = p.v

		case "plans":
			fc.plans = d.plans(p.v, "plans")
		case "penalties":
			fc.penalties = d.penalties(p.v, "penalties")
		case "exemptions":
			exemptNode = p.k
			fc.exempt, fc.exemptEff = d.exemptions(p.v, "exemptions")
		default:
			d.unknown(p, "", valid)
		}
	}
	for _, q := range d.quotas {
		q.fileLoc = fc.timeZone
	}
	shared := len(fc.policies) > 0 || len(fc.plans) > 0 || len(fc.penalties) > 0 || fc.defaultPlanNode != nil
	if fc.domainNode == nil && exemptNode != nil {
		d.add(exemptNode, "exemptions", "exemptions belong to a domain: this file has none")
	}
	if fc.domainNode == nil || fc.domain == "" {
		if fc.domainNode == nil && descNode == nil && shared {
			// A file of shared policies, plans and penalties only: no domain needed.
		} else {
			n := fc.domainNode
			if n == nil {
				n = root
			}
			d.add(n, "domain", "config file cannot have empty domain")
		}
	}
	if descNode != nil {
		fc.descriptors = d.descriptors(descNode, "descriptors", 1)
	}
	return fc
}

// ---- descriptors ----

func (d *decoder) descriptors(n *yaml.Node, field string, depth int) []*descCfg {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.add(n, field, "must be a list of descriptors, got %s", kindName(n))
		return nil
	}
	if depth > MaxDepth {
		d.add(n, field, "descriptors nest deeper than %d levels", MaxDepth)
		return nil
	}
	var out []*descCfg
	seen := map[Entry]int{}
	for i, c := range n.Content {
		if d.tooMany {
			return out
		}
		f := fmt.Sprintf("%s[%d]", field, i)
		dc := d.descriptor(c, f, depth)
		if dc == nil {
			continue
		}
		e := Entry{dc.key, dc.value}
		if first, dup := seen[e]; dup {
			path := dc.key
			if dc.value != "" {
				path += "=" + dc.value
			}
			d.add(deref(c), f, "duplicate descriptor %q at this level (first defined at line %d)", path, first)
			continue
		}
		seen[e] = dc.line
		out = append(out, dc)
	}
	return out
}

func (d *decoder) descriptor(n *yaml.Node, field string, depth int) *descCfg {
	n = deref(n)
	d.ndesc++
	if d.ndesc > MaxDescriptors {
		d.add(n, field, "more than %d descriptors in one file", MaxDescriptors)
		d.tooMany = true
		return nil
	}
	if n == nil || n.Kind != yaml.MappingNode {
		d.add(n, field, "a descriptor must be a mapping, got %s", kindName(n))
		return nil
	}
	dc := &descCfg{line: n.Line, col: n.Column, field: field, cost: 1}
	const valid = "key, value, rate_limit, rate_limits, policy, descriptors, shadow_mode, detailed_metric, value_to_metric, share_threshold, replaces, cost, failure_mode, allow_algorithm_override, plan, plan_from_value, quota, quotas, penalty"
	var keyNode, childNode, shareNode, pfvNode *yaml.Node
	for _, p := range d.fields(n, field) {
		f := join(field, p.key)
		if d.ruleField(&dc.ruleFields, p, f, ruleKeys{saas: true, nullLimit: true}) {
			continue
		}
		switch p.key {
		case "key":
			keyNode = p.v
			dc.key = d.name(p.v, f, "key")
		case "value":
			dc.value = d.name(p.v, f, "value")
		case "descriptors":
			childNode = p.v
		case "detailed_metric":
			dc.detailed = d.boolean(p.v, f)
		case "value_to_metric":
			dc.valueToMetric = d.boolean(p.v, f)
		case "share_threshold":
			dc.shareThreshold = d.boolean(p.v, f)
			shareNode = p.k
		case "replaces":
			dc.replaces = append(dc.replaces, d.replaces(p.v, f, "")...)
		case "cost":
			if v, ok := d.integer(p.v, f); ok {
				if v < 1 || v > algorithms.MaxRequests {
					d.add(p.v, f, "must be between 1 and %d, got %d", algorithms.MaxRequests, v)
				} else {
					dc.cost = v
				}
			}
		case "plan":
			dc.plan = d.ref(p.v, f, "plan name", "must name a plan")
			dc.planNode = p.v

		case "plan_from_value":
			dc.planFromValue = d.boolean(p.v, f)
			pfvNode = p.k
		default:
			d.unknown(p, field, valid)
		}
	}
	if dc.planNode != nil && dc.planFromValue {
		d.add(pfvNode, join(field, "plan_from_value"), "plan and plan_from_value are mutually exclusive")
	}
	if dc.planNode != nil || dc.planFromValue {
		at, f := dc.planNode, join(field, "plan")
		if at == nil {
			at, f = pfvNode, join(field, "plan_from_value")
		}
		if dc.rlNode != nil || dc.rlsNode != nil || dc.policyNode != nil {
			d.add(at, f, "a descriptor with a plan takes its limits from the plan: rate_limit, rate_limits and policy are not allowed here")
		}
	}
	if dc.key == "" {
		kn := keyNode
		if kn == nil {
			kn = n
		}
		d.add(kn, join(field, "key"), "descriptor has empty key")
	}
	d.checkRuleFields(&dc.ruleFields, field)
	if dc.shareThreshold && !strings.Contains(dc.value, "*") && !(dc.value == "" && strings.Contains(dc.key, "*")) {
		d.add(shareNode, join(field, "share_threshold"), "share_threshold can only be used with wildcard values (containing '*'), but found %q", dc.value)
	}
	for _, l := range dc.limits {
		for _, r := range l.replaces {
			if r == l.lim.Name && r != "" {
				d.add(n, join(field, "rate_limit.replaces"), "replaces should not contain name of same descriptor")
			}
		}
	}
	if childNode != nil {
		dc.children = d.descriptors(childNode, join(field, "descriptors"), depth+1)
	}
	return dc
}

// ruleField decodes p, at field f, into r when it is one of the shared keys k allows,
// and reports whether it was.
func (d *decoder) ruleField(r *ruleFields, p pair, f string, k ruleKeys) bool {
	switch p.key {
	case "rate_limit":
		if k.nullLimit && isNull(deref(p.v)) {
			return true
		}
		r.rlNode = p.k
		if l := d.rateLimit(p.v, f); l != nil {
			r.limits = append(r.limits, l)
		}
	case "rate_limits":
		r.rlsNode = p.k
		r.limits = append(r.limits, d.limitList(p.v, f)...)
	case "shadow_mode":
		r.shadow = d.boolean(p.v, f)
	case "failure_mode":
		r.failureMode = d.failureMode(p.v, f)
	case "allow_algorithm_override":
		r.allowOverride = d.boolean(p.v, f)
	case "policy":
		if !k.saas {
			return false
		}
		r.policy = d.name(p.v, f, "policy")
		r.policyNode = p.v
		if r.policy == "" {
			d.add(p.v, f, "must name a policy or preset")
		}
	case "quota":
		if !k.saas {
			return false
		}
		r.quotaNode = p.k
		if q := d.quota(p.v, f); q != nil {
			r.quotas = append(r.quotas, q)
		}
	case "quotas":
		if !k.saas {
			return false
		}
		r.quotasNode = p.k
		r.quotas = append(r.quotas, d.quotaList(p.v, f)...)
	case "penalty":
		if !k.saas {
			return false
		}
		r.penalty = d.ref(p.v, f, "penalty name", "must name a penalty")
		r.penaltyNode = p.v
	default:
		return false
	}
	return true
}

// checkRuleFields reports shared keys that exclude each other, and two quotas of one
// entry with the same name.
func (d *decoder) checkRuleFields(r *ruleFields, field string) {
	if r.rlNode != nil && r.rlsNode != nil {
		d.add(r.rlsNode, join(field, "rate_limits"), "rate_limit and rate_limits are mutually exclusive")
	}
	if r.policyNode != nil && (r.rlNode != nil || r.rlsNode != nil) {
		d.add(r.policyNode, join(field, "policy"), "policy and rate_limit/rate_limits are mutually exclusive")
	}
	if r.quotaNode != nil && r.quotasNode != nil {
		d.add(r.quotasNode, join(field, "quotas"), "quota and quotas are mutually exclusive")
	}
	if len(r.quotas) > 1 {
		d.uniqueQuotas(r.quotas, join(field, "quotas"))
	}
}

func (d *decoder) replaces(n *yaml.Node, field, own string) []string {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.add(n, field, "must be a list of {name: ...}, got %s", kindName(n))
		return nil
	}
	var out []string
	for i, c := range n.Content {
		f := fmt.Sprintf("%s[%d]", field, i)
		name := ""
		for _, p := range d.fields(c, f) {
			if p.key == "name" {
				name = d.name(p.v, join(f, "name"), "name")
			} else {
				d.unknown(p, f, "name")
			}
		}
		if name == "" {
			d.add(deref(c), f, "should not have an empty replaces entry")
			continue
		}
		out = append(out, name)
	}
	return out
}

// ---- rate_limit ----

func (d *decoder) rateLimit(n *yaml.Node, field string) *limitCfg {
	n = deref(n)
	if n == nil || n.Kind != yaml.MappingNode {
		d.add(n, field, "must be a mapping, got %s", kindName(n))
		return nil
	}
	const valid = "unit, requests_per_unit, unlimited, name, replaces, algorithm, burst, unit_multiplier, max_delay, failure_mode"
	lc := &limitCfg{line: n.Line}
	var unitNode, rpuNode, algNode, burstNode, multNode, delayNode *yaml.Node
	var unit string
	var rpu, burst, mult int64 = 0, 0, 1
	var delay time.Duration
	okAll := true
	alg := algorithms.FixedWindow
	for _, p := range d.fields(n, field) {
		f := join(field, p.key)
		switch p.key {
		case "unit":
			unitNode = p.v
			unit = d.str(p.v, f)
		case "requests_per_unit":
			rpuNode = p.v
			v, ok := d.integer(p.v, f)
			okAll = okAll && ok
			rpu = v
		case "unlimited":
			lc.unlimited = d.boolean(p.v, f)
		case "name":
			lc.lim.Name = d.name(p.v, f, "name")
		case "replaces":
			lc.replaces = d.replaces(p.v, f, "")
		case "algorithm":
			algNode = p.v
			a, err := algorithms.Parse(d.str(p.v, f))
			if err != nil {
				d.add(p.v, f, "%v", err)
				okAll = false
			} else {
				alg = a
			}
		case "burst":
			burstNode = p.v
			v, ok := d.integer(p.v, f)
			okAll = okAll && ok
			burst = v
		case "unit_multiplier":
			multNode = p.v
			v, ok := d.integer(p.v, f)
			okAll = okAll && ok
			mult = v
		case "max_delay":
			delayNode = p.v
			v, ok := d.duration(p.v, f)
			okAll = okAll && ok
			delay = v
		case "failure_mode":
			lc.failureMode = d.failureMode(p.v, f)
		default:
			d.unknown(p, field, valid)
		}
	}
	if lc.unlimited {
		for _, x := range []struct {
			n    *yaml.Node
			name string
		}{{unitNode, "unit"}, {rpuNode, "requests_per_unit"}, {algNode, "algorithm"}, {burstNode, "burst"}, {multNode, "unit_multiplier"}, {delayNode, "max_delay"}} {
			if x.n != nil {
				d.add(x.n, join(field, x.name), "should not specify %s when unlimited", x.name)
			}
		}
		return lc
	}
	unit = strings.ToLower(unit)
	secs, okUnit := UnitSeconds(unit)
	if !okUnit {
		un := unitNode
		if un == nil {
			un = n
		}
		d.add(un, join(field, "unit"), "invalid rate limit unit %q (want second, minute, hour, day, week, month or year)", unit)
		return nil
	}
	if !okAll {
		return nil
	}
	lc.lim.Algorithm = alg
	lc.lim.Unit = unit
	lc.lim.UnitMultiplier = mult
	if mult < 1 {
		d.add(multNode, join(field, "unit_multiplier"), "must be at least 1, got %d", mult)
		return nil
	}
	unitUS := secs * int64(time.Second/time.Microsecond)
	period := algorithms.MaxPeriod + 1 // too long: Validate reports it
	if mult <= algorithms.MaxPeriod/unitUS {
		period = unitUS * mult
	}
	p := algorithms.Limit{Requests: rpu, Period: period}
	bucket := alg == algorithms.TokenBucket || alg == algorithms.LeakyBucket
	if burstNode != nil {
		if !bucket {
			d.add(burstNode, join(field, "burst"), "burst applies to token_bucket and leaky_bucket only (algorithm is %s)", alg)
			return nil
		}
		if burst < 1 {
			d.add(burstNode, join(field, "burst"), "must be at least 1, got %d", burst)
			return nil
		}
		p.Burst = burst
	} else if bucket {
		p.Burst = rpu
	}
	if delayNode != nil {
		if alg != algorithms.LeakyBucket {
			d.add(delayNode, join(field, "max_delay"), "max_delay applies to leaky_bucket only (algorithm is %s)", alg)
			return nil
		}
		us := int64(delay / time.Microsecond)
		if delay > 0 && delay%time.Microsecond != 0 {
			us++ // never round a positive delay down to "no shaping"
		}
		p.MaxDelay = us
	}
	if err := p.Validate(alg); err != nil {
		// Point at the key that set the field Validate names.
		at, f := n, field
		le := limitError(err)
		var key *yaml.Node
		var name string
		switch le.Param {
		case algorithms.ParamBurst:
			key, name = burstNode, "burst"
		case algorithms.ParamMaxDelay:
			key, name = delayNode, "max_delay"
		case algorithms.ParamPeriod:
			key, name = multNode, "unit_multiplier"
			if key == nil {
				key, name = unitNode, "unit"
			}
		}
		if key == nil {
			// requests_per_unit, also for a burst that defaulted to it.
			key, name = rpuNode, "requests_per_unit"
		}
		if key != nil {
			at, f = key, join(field, name)
		}
		d.add(at, f, "%s", le.Msg)
		return nil
	}
	lc.lim.Params = p
	if rpu > math.MaxUint32 {
		lc.lim.RequestsPerUnit = math.MaxUint32
	} else {
		lc.lim.RequestsPerUnit = uint32(rpu)
	}
	return lc
}

// ---- policies ----

// definition is where a named policy, plan or penalty was written.
type definition struct {
	name      string
	file      string
	line, col int
}

func (df *definition) def() *definition { return df }

func (d *decoder) definition(p pair) definition {
	return definition{name: p.key, file: d.file, line: p.k.Line, col: p.k.Column}
}

// named returns the entries of a map of named definitions (policies:, plans:,
// penalties:), reporting and leaving out empty and over-long names.
func (d *decoder) named(n *yaml.Node, field, what string) []pair {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	var out []pair
	for _, p := range d.fields(n, field) {
		f := join(field, p.key)
		if p.key == "" {
			d.add(p.k, f, "%s name must not be empty", what)
			continue
		}
		if len(p.key) > MaxKeyLen {
			d.add(p.k, f, "%s name is %d bytes long; the limit is %d", what, len(p.key), MaxKeyLen)
			continue
		}
		out = append(out, p)
	}
	return out
}

func (d *decoder) policies(n *yaml.Node, field string) []*policyCfg {
	var out []*policyCfg
	for _, p := range d.named(n, field, "policy") {
		f := join(field, p.key)
		pc := &policyCfg{definition: d.definition(p)}
		const valid = "rate_limit, rate_limits, shadow_mode, failure_mode, allow_algorithm_override"
		for _, q := range d.fields(p.v, f) {
			if !d.ruleField(&pc.ruleFields, q, join(f, q.key), ruleKeys{}) {
				d.unknown(q, f, valid)
			}
		}
		d.checkRuleFields(&pc.ruleFields, f)
		if pc.rlNode == nil && pc.rlsNode == nil {
			d.add(p.k, f, "a policy needs rate_limit or rate_limits")
		}
		out = append(out, pc)
	}
	return out
}
