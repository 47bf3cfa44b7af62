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

	"github.com/halt-envoy/halt-envoy/internal/adaptive"
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

// PeriodUS returns a window of multiplier units of unitSeconds each, in microseconds:
// the period of a rate_limit (unit x unit_multiplier) and of Envoy's limit overrides.
// It is false when the window is longer than algorithms.MaxPeriod or the multiplier is
// below 1. The bound is checked before the product is formed, so a multiplier that
// would overflow int64 is refused as too long instead of wrapping to a short window
// (a day x 213,503,983 would otherwise be about 16 hours).
func PeriodUS(unitSeconds, multiplier int64) (int64, bool) {
	unitUS := unitSeconds * int64(time.Second/time.Microsecond)
	if unitUS <= 0 || multiplier < 1 || multiplier > algorithms.MaxPeriod/unitUS {
		return 0, false
	}
	return unitUS * multiplier, true
}

// ---- decoded, not yet resolved, configuration ----

type fileCfg struct {
	name        string
	domain      string
	domainNode  *yaml.Node
	descNode    *yaml.Node // descriptors:, decoded once the domain is known
	exemptNode  *yaml.Node
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

// ruleFields are the keys a descriptor, a plan and a policy share, decoded by the same
// rows (keys.go) and checked by one function (checkRuleFields). A policy takes only the
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
	charges       chargesCfg

	// The keys as written, for the checks of keys that exclude each other.
	rlNode, rlsNode, quotaNode, quotasNode *yaml.Node
}

type descCfg struct {
	ruleFields
	key, value     string
	line, col      int
	field          string
	detailed       bool
	valueToMetric  bool
	shareThreshold bool
	quotaMode      bool
	metadata       map[string]any
	replaces       []string
	cost           int64
	children       []*descCfg

	// The keys as written, for the checks after decoding.
	keyNode, childNode, shareNode, pfvNode *yaml.Node

	// adaptive is the descriptor's adaptive block (nil without one); adaptiveNode where
	// it was written.
	adaptive     *adaptive.Spec
	adaptiveNode *yaml.Node

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
	tables   *tables
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

// maxMetadataDepth bounds the nesting of a descriptor's metadata: it is returned to Envoy
// as a protobuf Struct, whose decoders limit nesting too.
const maxMetadataDepth = 32

// metadata reads a descriptor's metadata (the reference's RateLimitDescriptor.metadata,
// a google.protobuf.Struct): a mapping with string keys whose values are strings,
// numbers, booleans, null, lists and mappings of the same. Anything else is reported
// at its position.
func (d *decoder) metadata(n *yaml.Node, field string) map[string]any {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.add(n, field, "must be a mapping (it is returned to Envoy as a google.protobuf.Struct)")
		return nil
	}
	v, ok := d.structValue(n, field, 0)
	if !ok {
		return nil
	}
	m := v.(map[string]any)
	if len(m) == 0 {
		return nil
	}
	return m
}

// structValue converts n into a value of a google.protobuf.Struct (string, float64,
// bool, nil, []any, map[string]any), reporting what cannot be one.
func (d *decoder) structValue(n *yaml.Node, field string, depth int) (any, bool) {
	n = deref(n)
	if depth > maxMetadataDepth {
		d.add(n, field, "nested deeper than %d levels", maxMetadataDepth)
		return nil, false
	}
	switch n.Kind {
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		ok := true
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := deref(n.Content[i])
			if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!null" || k.ShortTag() == "!!merge" {
				d.add(k, field, "a metadata key must be a string")
				ok = false
				continue
			}
			f := join(field, k.Value)
			if _, dup := m[k.Value]; dup {
				d.add(k, f, "given twice")
				ok = false
				continue
			}
			v, vok := d.structValue(n.Content[i+1], f, depth+1)
			ok = ok && vok
			m[k.Value] = v
		}
		return m, ok
	case yaml.SequenceNode:
		l := make([]any, 0, len(n.Content))
		ok := true
		for i, c := range n.Content {
			v, vok := d.structValue(c, fmt.Sprintf("%s[%d]", field, i), depth+1)
			ok = ok && vok
			l = append(l, v)
		}
		return l, ok
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return nil, true
		case "!!bool":
			var b bool
			if n.Decode(&b) == nil {
				return b, true
			}
		case "!!int", "!!float":
			var f float64
			if n.Decode(&f) == nil && !math.IsInf(f, 0) && !math.IsNaN(f) {
				return f, true
			}
			d.add(n, field, "%q is not a finite number", n.Value)
			return nil, false
		case "!!str":
			return n.Value, true
		}
		d.add(n, field, "a value of type %s cannot be metadata (want a string, number, boolean, null, list or mapping)", n.ShortTag())
		return nil, false
	}
	d.add(n, field, "not a value metadata can hold")
	return nil, false
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
	d.tables.file.decode(d, root, "", fc)
	for _, q := range d.quotas {
		q.fileLoc = fc.timeZone
	}
	if fc.descNode != nil {
		fc.descriptors = d.descriptors(fc.descNode, "descriptors", 1)
	}
	return fc
}

func fileKeys() *keys[*fileCfg] {
	type row = key[*fileCfg]
	return newKeys("## File keys", (*decoder).checkFile,
		row{"domain", func(d *decoder, fc *fileCfg, p pair, f string) {
			fc.domain = d.name(p.v, f, "domain")
			fc.domainNode = p.v
		}},
		row{"descriptors", func(d *decoder, fc *fileCfg, p pair, f string) { fc.descNode = p.v }},
		row{"policies", func(d *decoder, fc *fileCfg, p pair, f string) { fc.policies = d.policies(p.v, f) }},
		row{"failure_mode", func(d *decoder, fc *fileCfg, p pair, f string) { fc.failureMode = d.failureMode(p.v, f) }},
		row{"time_zone", func(d *decoder, fc *fileCfg, p pair, f string) { fc.timeZoneName, fc.timeZone = d.timeZone(p.v, f) }},
		row{"default_plan", func(d *decoder, fc *fileCfg, p pair, f string) {
			fc.defaultPlan = d.ref(p.v, f, "plan name", "must name a plan")
			fc.defaultPlanNode = p.v
		}},
		row{"plans", func(d *decoder, fc *fileCfg, p pair, f string) { fc.plans = d.plans(p.v, f) }},
		row{"penalties", func(d *decoder, fc *fileCfg, p pair, f string) { fc.penalties = d.penalties(p.v, f) }},
		row{"exemptions", func(d *decoder, fc *fileCfg, p pair, f string) {
			fc.exemptNode = p.k
			fc.exempt, fc.exemptEff = d.exemptions(p.v, f)
		}},
	)
}

// checkFile requires a domain, unless the file holds only shared definitions.
func (d *decoder) checkFile(fc *fileCfg, root *yaml.Node, _ string) {
	shared := len(fc.policies) > 0 || len(fc.plans) > 0 || len(fc.penalties) > 0 || fc.defaultPlanNode != nil
	if fc.domainNode == nil && fc.exemptNode != nil {
		d.add(fc.exemptNode, "exemptions", "exemptions belong to a domain: this file has none")
	}
	if fc.domainNode == nil || fc.domain == "" {
		if fc.domainNode == nil && fc.descNode == nil && shared {
			// A file of shared policies, plans and penalties only: no domain needed.
		} else {
			n := fc.domainNode
			if n == nil {
				n = root
			}
			d.add(n, "domain", "config file cannot have empty domain")
		}
	}
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
	d.tables.descriptor.decode(d, n, field, dc)
	if dc.childNode != nil {
		dc.children = d.descriptors(dc.childNode, join(field, "descriptors"), depth+1)
	}
	return dc
}

func descriptorKeys() *keys[*descCfg] {
	type row = key[*descCfg]
	return newKeys("## Descriptor keys", (*decoder).checkDescriptor,
		row{"key", func(d *decoder, dc *descCfg, p pair, f string) {
			dc.keyNode = p.v
			dc.key = d.name(p.v, f, "key")
		}},
		row{"value", func(d *decoder, dc *descCfg, p pair, f string) { dc.value = d.name(p.v, f, "value") }},
		rateLimitKey[*descCfg](true),
		rateLimitsKey[*descCfg](),
		policyKey[*descCfg](),
		row{"descriptors", func(d *decoder, dc *descCfg, p pair, f string) { dc.childNode = p.v }},
		shadowModeKey[*descCfg](),
		flag("detailed_metric", func(dc *descCfg) *bool { return &dc.detailed }),
		flag("value_to_metric", func(dc *descCfg) *bool { return &dc.valueToMetric }),
		flag("quota_mode", func(dc *descCfg) *bool { return &dc.quotaMode }),
		row{"metadata", func(d *decoder, dc *descCfg, p pair, f string) { dc.metadata = d.metadata(p.v, f) }},
		row{"share_threshold", func(d *decoder, dc *descCfg, p pair, f string) {
			dc.shareThreshold = d.boolean(p.v, f)
			dc.shareNode = p.k
		}},
		row{"replaces", func(d *decoder, dc *descCfg, p pair, f string) {
			dc.replaces = append(dc.replaces, d.replaces(p.v, f)...)
		}},
		row{"cost", func(d *decoder, dc *descCfg, p pair, f string) {
			if v, ok := d.integer(p.v, f); ok {
				if v < 1 || v > algorithms.MaxRequests {
					d.add(p.v, f, "must be between 1 and %d, got %d", algorithms.MaxRequests, v)
				} else {
					dc.cost = v
				}
			}
		}},
		failureModeKey[*descCfg](),
		allowOverrideKey[*descCfg](),
		row{"plan", func(d *decoder, dc *descCfg, p pair, f string) {
			dc.plan = d.ref(p.v, f, "plan name", "must name a plan")
			dc.planNode = p.v
		}},
		row{"plan_from_value", func(d *decoder, dc *descCfg, p pair, f string) {
			dc.planFromValue = d.boolean(p.v, f)
			dc.pfvNode = p.k
		}},
		quotaKey[*descCfg](),
		quotasKey[*descCfg](),
		penaltyKey[*descCfg](),
		row{"adaptive", func(d *decoder, dc *descCfg, p pair, f string) {
			dc.adaptiveNode = p.k
			dc.adaptive = d.adaptive(p.v, f)
		}},
		overChargeKey[*descCfg](),
		maxDebtKey[*descCfg](),
		reportOnlyKey[*descCfg](),
		idempotencyTTLKey[*descCfg](),
	)
}

// adaptive decodes an adaptive block: its keys, defaults, then the rules between them
// (adaptive.Spec.Validate), reported at the key that breaks one.
func (d *decoder) adaptive(n *yaml.Node, field string) *adaptive.Spec {
	n = deref(n)
	if n == nil || n.Kind != yaml.MappingNode {
		d.add(n, field, "must be a mapping (query, interval, bad_above, good_below, min, max, decrease, increase), got %s", kindName(n))
		return nil
	}
	s := &adaptive.Spec{Interval: 15 * time.Second, Min: 0.25, Max: 1, Decrease: 0.5, Increase: 0.1}
	at := map[string]*yaml.Node{}
	ok := true
	num := func(dst *float64) func(*decoder, *adaptive.Spec, pair, string) {
		return func(d *decoder, _ *adaptive.Spec, p pair, f string) {
			v := deref(p.v)
			if v == nil || v.Kind != yaml.ScalarNode || (v.ShortTag() != "!!int" && v.ShortTag() != "!!float") {
				d.add(p.v, f, "must be a number, got %s", kindName(v))
				ok = false
				return
			}
			if err := v.Decode(dst); err != nil {
				d.add(p.v, f, "must be a number, got %s", v.Value)
				ok = false
			}
		}
	}
	hasBad, hasGood := false, false
	type row = key[*adaptive.Spec]
	rows := newKeys("", nil,
		row{"query", func(d *decoder, s *adaptive.Spec, p pair, f string) { s.Query = d.str(p.v, f) }},
		row{"interval", func(d *decoder, s *adaptive.Spec, p pair, f string) {
			v, good := d.duration(p.v, f)
			ok = ok && good
			s.Interval = v
		}},
		row{"bad_above", func(d *decoder, s *adaptive.Spec, p pair, f string) { hasBad = true; num(&s.BadAbove)(d, s, p, f) }},
		row{"good_below", func(d *decoder, s *adaptive.Spec, p pair, f string) { hasGood = true; num(&s.GoodBelow)(d, s, p, f) }},
		row{"min", func(d *decoder, s *adaptive.Spec, p pair, f string) { num(&s.Min)(d, s, p, f) }},
		row{"max", func(d *decoder, s *adaptive.Spec, p pair, f string) { num(&s.Max)(d, s, p, f) }},
		row{"decrease", func(d *decoder, s *adaptive.Spec, p pair, f string) { num(&s.Decrease)(d, s, p, f) }},
		row{"increase", func(d *decoder, s *adaptive.Spec, p pair, f string) { num(&s.Increase)(d, s, p, f) }},
	)
	for _, p := range d.fields(n, field) {
		at[p.key] = p.v
		rows.decodePair(d, p, field, s)
	}
	if !hasBad {
		d.add(n, join(field, "bad_above"), "required: the signal's value above which the limit is lowered")
		ok = false
	}
	if !hasGood {
		s.GoodBelow = s.BadAbove // no band: a value is bad or good
	}
	if !ok {
		return nil
	}
	if err := s.Validate(); err != nil {
		var ke *adaptive.KeyError
		if errors.As(err, &ke) {
			where := at[ke.Key]
			if where == nil {
				where = n // a default broke the rule: the block is where
			}
			d.add(where, join(field, ke.Key), "%s", ke.Msg)
		} else {
			d.add(n, field, "%v", err)
		}
		return nil
	}
	return s
}

// checkDescriptor reports keys of descriptor n that exclude or need each other.
func (d *decoder) checkDescriptor(dc *descCfg, n *yaml.Node, field string) {
	if dc.adaptiveNode != nil && ((dc.rlNode == nil && dc.rlsNode == nil && dc.policyNode == nil) || dc.planNode != nil || dc.planFromValue) {
		d.add(dc.adaptiveNode, join(field, "adaptive"), "adaptive scales this descriptor's own limits: rate_limit, rate_limits or policy on the same descriptor (not a plan)")
	}
	if dc.planNode != nil && dc.planFromValue {
		d.add(dc.pfvNode, join(field, "plan_from_value"), "plan and plan_from_value are mutually exclusive")
	}
	if dc.planNode != nil || dc.planFromValue {
		at, f := dc.planNode, join(field, "plan")
		if at == nil {
			at, f = dc.pfvNode, join(field, "plan_from_value")
		}
		if dc.rlNode != nil || dc.rlsNode != nil || dc.policyNode != nil {
			d.add(at, f, "a descriptor with a plan takes its limits from the plan: rate_limit, rate_limits and policy are not allowed here")
		}
	}
	if dc.key == "" {
		kn := dc.keyNode
		if kn == nil {
			kn = n
		}
		d.add(kn, join(field, "key"), "descriptor has empty key")
	}
	d.checkRuleFields(&dc.ruleFields, field)
	if dc.shareThreshold && !strings.Contains(dc.value, "*") && !(dc.value == "" && strings.Contains(dc.key, "*")) {
		d.add(dc.shareNode, join(field, "share_threshold"), "share_threshold can only be used with wildcard values (containing '*'), but found %q", dc.value)
	}
	for _, l := range dc.limits {
		for _, r := range l.replaces {
			if r == l.lim.Name && r != "" {
				d.add(n, join(field, "rate_limit.replaces"), "replaces should not contain name of same descriptor")
			}
		}
	}
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
	d.checkCharges(&r.charges, field)
}

func (d *decoder) replaces(n *yaml.Node, field string) []string {
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
		d.tables.replace.decode(d, c, f, &name)
		if name == "" {
			d.add(deref(c), f, "should not have an empty replaces entry")
			continue
		}
		out = append(out, name)
	}
	return out
}

// replaceKeys is the table of one entry of replaces: {name: ...}.
func replaceKeys() *keys[*string] {
	return newKeys("", nil, key[*string]{"name", func(d *decoder, name *string, p pair, f string) {
		*name = d.name(p.v, f, "name")
	}})
}

// ---- rate_limit ----

// limitDraft is a rate_limit as its keys are decoded, before the limit is checked whole.
// The limit is built in place (one allocation per limit).
type limitDraft struct {
	limitCfg
	unitNode, rpuNode, algNode, burstNode, multNode, delayNode *yaml.Node
	unit                                                       string
	rpu, burst, mult                                           int64
	delay                                                      time.Duration
	okAll                                                      bool // every number and the algorithm decoded
	alg                                                        algorithms.Algorithm

	// The local-first keys (consistency.go).
	consistency                              Consistency
	consistencyNode, overshootNode, syncNode *yaml.Node
	overshoot                                float64
	sync                                     time.Duration
	// regions: shared (regions.go).
	regionsNode *yaml.Node
	shared      bool
}

func rateLimitKeys() *keys[*limitDraft] {
	type row = key[*limitDraft]
	// number is the row of an integer key stored at ptr(l), whose node is kept at node(l).
	number := func(name string, ptr func(*limitDraft) *int64, node func(*limitDraft) **yaml.Node) row {
		return row{name, func(d *decoder, l *limitDraft, p pair, f string) {
			*node(l) = p.v
			v, ok := d.integer(p.v, f)
			l.okAll = l.okAll && ok
			*ptr(l) = v
		}}
	}
	return newKeys("## rate_limit keys", nil,
		row{"unit", func(d *decoder, l *limitDraft, p pair, f string) {
			l.unitNode = p.v
			l.unit = d.str(p.v, f)
		}},
		number("requests_per_unit", func(l *limitDraft) *int64 { return &l.rpu }, func(l *limitDraft) **yaml.Node { return &l.rpuNode }),
		flag("unlimited", func(l *limitDraft) *bool { return &l.unlimited }),
		row{"name", func(d *decoder, l *limitDraft, p pair, f string) { l.lim.Name = d.name(p.v, f, "name") }},
		row{"replaces", func(d *decoder, l *limitDraft, p pair, f string) { l.replaces = d.replaces(p.v, f) }},
		row{"algorithm", func(d *decoder, l *limitDraft, p pair, f string) {
			l.algNode = p.v
			a, err := algorithms.Parse(d.str(p.v, f))
			if err != nil {
				d.add(p.v, f, "%v", err)
				l.okAll = false
			} else {
				l.alg = a
			}
		}},
		number("burst", func(l *limitDraft) *int64 { return &l.burst }, func(l *limitDraft) **yaml.Node { return &l.burstNode }),
		number("unit_multiplier", func(l *limitDraft) *int64 { return &l.mult }, func(l *limitDraft) **yaml.Node { return &l.multNode }),
		row{"max_delay", func(d *decoder, l *limitDraft, p pair, f string) {
			l.delayNode = p.v
			v, ok := d.duration(p.v, f)
			l.okAll = l.okAll && ok
			l.delay = v
		}},
		row{"failure_mode", func(d *decoder, l *limitDraft, p pair, f string) { l.failureMode = d.failureMode(p.v, f) }},
		row{"consistency", func(d *decoder, l *limitDraft, p pair, f string) {
			l.consistencyNode = p.v
			l.consistency = d.consistency(p.v, f)
		}},
		row{"max_overshoot", func(d *decoder, l *limitDraft, p pair, f string) {
			l.overshootNode = p.v
			v, ok := d.fraction(p.v, f)
			l.okAll = l.okAll && ok
			l.overshoot = v
		}},
		row{"sync_interval", func(d *decoder, l *limitDraft, p pair, f string) {
			l.syncNode = p.v
			v, ok := d.duration(p.v, f)
			l.okAll = l.okAll && ok
			l.sync = v
		}},
		row{"regions", func(d *decoder, l *limitDraft, p pair, f string) {
			l.regionsNode = p.v
			l.shared = d.regions(p.v, f)
		}},
	)
}

func (d *decoder) rateLimit(n *yaml.Node, field string) *limitCfg {
	n = deref(n)
	if n == nil || n.Kind != yaml.MappingNode {
		d.add(n, field, "must be a mapping, got %s", kindName(n))
		return nil
	}
	l := &limitDraft{limitCfg: limitCfg{line: n.Line}, mult: 1, okAll: true, alg: algorithms.FixedWindow}
	d.tables.rateLimit.decode(d, n, field, l)
	return d.limit(l, n, field)
}

// limit checks the rate_limit l, decoded from n, as a whole and returns it, or nil when
// it is invalid (reported).
func (d *decoder) limit(l *limitDraft, n *yaml.Node, field string) *limitCfg {
	lc := &l.limitCfg
	if lc.unlimited {
		for _, x := range []struct {
			n    *yaml.Node
			name string
		}{{l.unitNode, "unit"}, {l.rpuNode, "requests_per_unit"}, {l.algNode, "algorithm"}, {l.burstNode, "burst"}, {l.multNode, "unit_multiplier"}, {l.delayNode, "max_delay"},
			{l.consistencyNode, "consistency"}, {l.overshootNode, "max_overshoot"}, {l.syncNode, "sync_interval"}, {l.regionsNode, "regions"}} {
			if x.n != nil {
				d.add(x.n, join(field, x.name), "should not specify %s when unlimited", x.name)
			}
		}
		return lc
	}
	unit := strings.ToLower(l.unit)
	secs, okUnit := UnitSeconds(unit)
	if !okUnit {
		un := l.unitNode
		if un == nil {
			un = n
		}
		d.add(un, join(field, "unit"), "invalid rate limit unit %q (want second, minute, hour, day, week, month or year)", unit)
		return nil
	}
	if !l.okAll {
		return nil
	}
	alg, mult := l.alg, l.mult
	lc.lim.Algorithm = alg
	lc.lim.Unit = unit
	lc.lim.UnitMultiplier = mult
	if mult < 1 {
		d.add(l.multNode, join(field, "unit_multiplier"), "must be at least 1, got %d", mult)
		return nil
	}
	period, ok := PeriodUS(secs, mult)
	if !ok {
		period = algorithms.MaxPeriod + 1 // too long: Validate reports it at unit_multiplier
	}
	p := algorithms.Limit{Requests: l.rpu, Period: period}
	bucket := alg == algorithms.TokenBucket || alg == algorithms.LeakyBucket
	if l.burstNode != nil {
		if !bucket {
			d.add(l.burstNode, join(field, "burst"), "burst applies to token_bucket and leaky_bucket only (algorithm is %s)", alg)
			return nil
		}
		if l.burst < 1 {
			d.add(l.burstNode, join(field, "burst"), "must be at least 1, got %d", l.burst)
			return nil
		}
		p.Burst = l.burst
	} else if bucket {
		p.Burst = l.rpu
	}
	if l.delayNode != nil {
		if alg != algorithms.LeakyBucket {
			d.add(l.delayNode, join(field, "max_delay"), "max_delay applies to leaky_bucket only (algorithm is %s)", alg)
			return nil
		}
		us := int64(l.delay / time.Microsecond)
		if l.delay > 0 && l.delay%time.Microsecond != 0 {
			us++ // never round a positive delay down to "no shaping"
		}
		p.MaxDelay = us
	}
	if err := p.Validate(alg); err != nil {
		at, f := n, field
		if k, name := l.keyOf(limitError(err).Param); k != nil {
			at, f = k, join(field, name)
		}
		d.add(at, f, "%s", err)
		return nil
	}
	lc.lim.Params = p
	if !d.checkConsistency(l, n, field) {
		return nil
	}
	if l.rpu > math.MaxUint32 {
		lc.lim.RequestsPerUnit = math.MaxUint32
	} else {
		lc.lim.RequestsPerUnit = uint32(l.rpu)
	}
	return lc
}

// keyOf returns the key (its value's node and its name) that set the field of
// algorithms.Limit that param names; the node is nil when that key is not written.
func (l *limitDraft) keyOf(param algorithms.Param) (*yaml.Node, string) {
	switch {
	case param == algorithms.ParamBurst && l.burstNode != nil:
		return l.burstNode, "burst"
	case param == algorithms.ParamMaxDelay && l.delayNode != nil:
		return l.delayNode, "max_delay"
	case param == algorithms.ParamPeriod && l.multNode != nil:
		return l.multNode, "unit_multiplier"
	case param == algorithms.ParamPeriod && l.unitNode != nil:
		return l.unitNode, "unit"
	}
	// requests_per_unit, also for a burst that defaulted to it.
	return l.rpuNode, "requests_per_unit"
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
		d.tables.policy.decode(d, p.v, f, pc)
		if pc.rlNode == nil && pc.rlsNode == nil {
			d.add(p.k, f, "a policy needs rate_limit or rate_limits")
		}
		out = append(out, pc)
	}
	return out
}

func policyKeys() *keys[*policyCfg] {
	return newKeys("| policy key |", checkRules[*policyCfg],
		rateLimitKey[*policyCfg](false),
		rateLimitsKey[*policyCfg](),
		shadowModeKey[*policyCfg](),
		failureModeKey[*policyCfg](),
		allowOverrideKey[*policyCfg](),
		overChargeKey[*policyCfg](),
		maxDebtKey[*policyCfg](),
		reportOnlyKey[*policyCfg](),
		idempotencyTTLKey[*policyCfg](),
	)
}

// checkRules is the check of a policy or plan: the rules between its shared keys.
func checkRules[T ruled](d *decoder, t T, _ *yaml.Node, field string) {
	d.checkRuleFields(t.rules(), field)
}
