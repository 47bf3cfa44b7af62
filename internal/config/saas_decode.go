package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/halt-envoy/halt-envoy/internal/quota"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// planCfg is one decoded entry of plans:.
type planCfg struct {
	definition
	ruleFields
	empty bool // no limits, policy or quotas: reported by the decoder
}

// penaltyCfg is one decoded entry of penalties:.
type penaltyCfg struct {
	definition
	pol *PenaltyPolicy // nil when invalid (already reported)
}

// timeZone decodes a time zone name. "" and "UTC" are UTC; "Local" is refused (it would
// make quotas depend on the server's host).
func (d *decoder) timeZone(n *yaml.Node, field string) (string, *time.Location) {
	s := d.str(n, field)
	if s == "" {
		d.add(deref(n), field, "must name a time zone such as UTC or Europe/Berlin")
		return "", nil
	}
	if s == "Local" {
		d.add(deref(n), field, "time zone \"Local\" depends on the server's host; name the zone (e.g. Europe/Berlin)")
		return "", nil
	}
	loc, err := time.LoadLocation(s)
	if err != nil {
		d.add(deref(n), field, "unknown time zone %q (want an IANA name such as UTC or Europe/Berlin)", s)
		return "", nil
	}
	return s, loc
}

// durationUS decodes a positive duration into microseconds, rounding a fraction up.
func (d *decoder) durationUS(n *yaml.Node, field string) (int64, bool) {
	v, ok := d.duration(n, field)
	if !ok {
		return 0, false
	}
	if v <= 0 {
		d.add(deref(n), field, "must be a positive duration, got %s", v)
		return 0, false
	}
	us := int64(v / time.Microsecond)
	if v%time.Microsecond != 0 {
		us++
	}
	return us, true
}

// limitList decodes rate_limits: a non-empty list of rate_limit blocks.
func (d *decoder) limitList(n *yaml.Node, field string) []*limitCfg {
	items := deref(n)
	return nonEmptyList(d, n, field, "rate_limit blocks", func(c *yaml.Node, f string) *limitCfg {
		l := d.rateLimit(c, f)
		if l != nil && l.unlimited && len(items.Content) > 1 {
			d.add(c, f, "unlimited cannot be combined with other limits")
		}
		return l
	})
}

// nonEmptyList decodes n, a non-empty sequence of what, with one, which returns nil
// for an item it reported as wrong.
func nonEmptyList[T any](d *decoder, n *yaml.Node, field, what string, one func(*yaml.Node, string) *T) []*T {
	v := deref(n)
	if v == nil || v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
		d.add(n, field, "must be a non-empty list of %s, got %s", what, kindName(v))
		return nil
	}
	var out []*T
	for i, c := range v.Content {
		if x := one(c, fmt.Sprintf("%s[%d]", field, i)); x != nil {
			out = append(out, x)
		}
	}
	return out
}

// ---- quotas ----

func (d *decoder) quota(n *yaml.Node, field string) *quotaCfg {
	n = deref(n)
	if n == nil || n.Kind != yaml.MappingNode {
		d.add(n, field, "a quota must be a mapping, got %s", kindName(n))
		return nil
	}
	q := &quotaCfg{file: d.file, node: n, field: field}
	var periodNode, reqNode *yaml.Node
	ok := true
	for _, p := range d.fields(n, field) {
		f := join(field, p.key)
		switch p.key {
		case "name":
			q.name = d.name(p.v, f, "name")
		case "period":
			periodNode = p.v
			s := d.str(p.v, f)
			per, err := quota.ParsePeriod(s)
			if err != nil {
				d.add(deref(p.v), f, "%v", err)
				ok = false
			}
			q.period = per
		case "requests":
			reqNode = p.v
			v, good := d.integer(p.v, f)
			if good && (v < 0 || v > algorithms.MaxRequests) {
				d.add(deref(p.v), f, "must be between 0 and %d, got %d", algorithms.MaxRequests, v)
				good = false
			}
			ok = ok && good
			q.requests = v
		case "time_zone":
			q.locName, q.loc = d.timeZone(p.v, f)
			ok = ok && q.loc != nil
		default:
			d.unknown(p, field, "name, period, requests, time_zone")
		}
	}
	if periodNode == nil {
		d.add(n, join(field, "period"), "a quota needs a period (hourly, daily, weekly, monthly or yearly)")
		ok = false
	}
	if reqNode == nil {
		d.add(n, join(field, "requests"), "a quota needs requests (0 allows nothing)")
		ok = false
	}
	if !ok {
		return nil
	}
	if q.name == "" {
		q.name = q.period.String()
	}
	d.quotas = append(d.quotas, q)
	return q
}

func (d *decoder) quotaList(n *yaml.Node, field string) []*quotaCfg {
	return nonEmptyList(d, n, field, "quotas", d.quota)
}

// uniqueQuotas reports two quotas of one list with the same name: they would share a
// counter.
func (d *decoder) uniqueQuotas(qs []*quotaCfg, field string) {
	seen := map[string]*quotaCfg{}
	for _, q := range qs {
		if first, dup := seen[q.name]; dup {
			d.add(q.node, q.field, "two quotas named %q (first at line %d): give one a name", q.name, first.node.Line)
			continue
		}
		seen[q.name] = q
	}
}

// ---- plans ----

func (d *decoder) plans(n *yaml.Node, field string) []*planCfg {
	var out []*planCfg
	for _, p := range d.named(n, field, "plan") {
		f := join(field, p.key)
		pc := &planCfg{definition: d.definition(p)}
		const valid = "rate_limit, rate_limits, policy, quota, quotas, penalty, shadow_mode, failure_mode, allow_algorithm_override"
		for _, q := range d.fields(p.v, f) {
			if !d.ruleField(&pc.ruleFields, q, join(f, q.key), ruleKeys{saas: true}) {
				d.unknown(q, f, valid)
			}
		}
		d.checkRuleFields(&pc.ruleFields, f)
		if pc.rlNode == nil && pc.rlsNode == nil && pc.policyNode == nil && pc.quotaNode == nil && pc.quotasNode == nil {
			d.add(p.k, f, "a plan needs rate_limit, rate_limits, policy or quotas")
			pc.empty = true
		}
		out = append(out, pc)
	}
	return out
}

// ---- penalties ----

func (d *decoder) penalties(n *yaml.Node, field string) []*penaltyCfg {
	var out []*penaltyCfg
	for _, p := range d.named(n, field, "penalty") {
		f := join(field, p.key)
		pc := &penaltyCfg{definition: d.definition(p)}
		pc.pol = d.penalty(p.k, p.v, f, p.key)
		out = append(out, pc)
	}
	return out
}

func (d *decoder) penalty(k, n *yaml.Node, field, name string) *PenaltyPolicy {
	pol := &PenaltyPolicy{Name: name, Severity: 1}
	ok := true
	var thrNode, ladderNode, decayNode *yaml.Node
	for _, p := range d.fields(n, field) {
		f := join(field, p.key)
		switch p.key {
		case "threshold", "severity":
			v, good := d.integer(p.v, f)
			if good && (v < 1 || v > algorithms.MaxRequests) {
				d.add(deref(p.v), f, "must be between 1 and %d, got %d", algorithms.MaxRequests, v)
				good = false
			}
			ok = ok && good
			if p.key == "threshold" {
				thrNode = p.v
				pol.Params.Requests = v
			} else {
				pol.Severity = v
			}
		case "ladder":
			ladderNode = p.v
			v := deref(p.v)
			if v == nil || v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
				d.add(p.v, f, "must be a non-empty list of lockout durations (1 to %d), got %s", algorithms.MaxLadder, kindName(v))
				ok = false
				continue
			}
			if len(v.Content) > algorithms.MaxLadder {
				d.add(v, f, "has %d steps; a ladder has 1 to %d", len(v.Content), algorithms.MaxLadder)
				ok = false
				continue
			}
			for i, c := range v.Content {
				g := fmt.Sprintf("%s[%d]", f, i)
				us, good := d.durationUS(c, g)
				if !good {
					ok = false
					continue
				}
				if i > 0 && pol.Params.Ladder[i-1] > 0 && us <= pol.Params.Ladder[i-1] {
					d.add(deref(c), g, "the ladder must increase: step %d (%s) is not longer than step %d (%s)", i+1,
						time.Duration(us)*time.Microsecond, i, time.Duration(pol.Params.Ladder[i-1])*time.Microsecond)
					ok = false
				}
				pol.Params.Ladder[i] = us
			}
			pol.Params.Steps = len(v.Content)
		case "decay":
			decayNode = p.v
			us, good := d.durationUS(p.v, f)
			ok = ok && good
			pol.Params.Period = us
		default:
			d.unknown(p, field, "threshold, severity, ladder, decay")
		}
	}
	for _, x := range []struct {
		n    *yaml.Node
		name string
	}{{thrNode, "threshold"}, {ladderNode, "ladder"}, {decayNode, "decay"}} {
		if x.n == nil {
			d.add(deref(n), join(field, x.name), "a penalty needs %s", x.name)
			ok = false
		}
	}
	if !ok {
		return nil
	}
	if err := pol.Params.Validate(algorithms.Penalty); err != nil {
		// Point at the key (the ladder step) that set the field Validate names.
		at, f := k, field
		le := limitError(err)
		switch le.Param {
		case algorithms.ParamLadder:
			at, f = ladderNode, join(field, "ladder")
			if v := deref(ladderNode); le.Step > 0 && le.Step <= len(v.Content) {
				at, f = v.Content[le.Step-1], fmt.Sprintf("%s[%d]", f, le.Step-1)
			}
		case algorithms.ParamPeriod:
			at, f = decayNode, join(field, "decay")
		case algorithms.ParamRequests:
			at, f = thrNode, join(field, "threshold")
		}
		d.add(deref(at), f, "%s", le.Msg)
		return nil
	}
	return pol
}

// ---- exemptions ----

// strItem is one element of a list of strings, with where it is.
type strItem struct {
	s     string
	n     *yaml.Node
	field string
}

func (d *decoder) strList(n *yaml.Node, field, what string) []strItem {
	v := deref(n)
	if isNull(v) {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		d.add(v, field, "must be a list of %s, got %s", what, kindName(v))
		return nil
	}
	var out []strItem
	for i, c := range v.Content {
		g := fmt.Sprintf("%s[%d]", field, i)
		s := d.name(c, g, what)
		if s == "" {
			if c := deref(c); c != nil && c.Kind == yaml.ScalarNode {
				d.add(c, g, "must not be empty")
			}
			continue
		}
		out = append(out, strItem{s, deref(c), g})
	}
	return out
}

func strs(items []strItem) []string {
	out := make([]string, 0, len(items))
	for _, it := range items {
		out = append(out, it.s)
	}
	return out
}

func (d *decoder) exemptions(n *yaml.Node, field string) (*exemptions, *EffectiveExemptions) {
	n = deref(n)
	if isNull(n) {
		return nil, nil
	}
	x := &exemptions{
		paths:    map[string]struct{}{},
		pathKeys: map[string]struct{}{},
		addrKeys: map[string]struct{}{},
		values:   map[Entry]struct{}{},
	}
	eff := &EffectiveExemptions{}
	var pathKeys, addrKeys []string
	var pathKeysSet, addrKeysSet bool
	for _, p := range d.fields(n, field) {
		f := join(field, p.key)
		switch p.key {
		case "paths":
			for _, it := range d.strList(p.v, f, "paths") {
				s := it.s
				star := strings.IndexByte(s, '*')
				switch {
				case star < 0:
					x.paths[s] = struct{}{}
				case star == len(s)-1:
					x.prefixes = append(x.prefixes, s[:star])
				default:
					d.add(it.n, it.field, "a * is only allowed at the end of a path (a prefix), got %q", s)
					continue
				}
				eff.Paths = append(eff.Paths, s)
			}
		case "path_keys":
			pathKeysSet = true
			pathKeys = strs(d.strList(p.v, f, "descriptor keys"))
		case "private_ranges":
			x.private = d.boolean(p.v, f)
			eff.PrivateRanges = x.private
		case "cidrs":
			for _, it := range d.strList(p.v, f, "CIDRs") {
				s := it.s
				pre, err := netip.ParsePrefix(s)
				if err != nil {
					d.add(it.n, it.field, "invalid CIDR %q (want an address range such as 203.0.113.0/24 or 2001:db8::/32)", s)
					continue
				}
				pre = pre.Masked()
				x.cidrs = append(x.cidrs, pre)
				eff.CIDRs = append(eff.CIDRs, pre.String())
			}
		case "address_keys":
			addrKeysSet = true
			addrKeys = strs(d.strList(p.v, f, "descriptor keys"))
		case "values":
			v := deref(p.v)
			if isNull(v) {
				continue
			}
			if v.Kind != yaml.SequenceNode {
				d.add(v, f, "must be a list of {key: ..., value: ...}, got %s", kindName(v))
				continue
			}
			for i, c := range v.Content {
				g := fmt.Sprintf("%s[%d]", f, i)
				var e Entry
				var keyNode *yaml.Node
				for _, q := range d.fields(c, g) {
					switch q.key {
					case "key":
						keyNode = q.v
						e.Key = d.name(q.v, join(g, "key"), "key")
					case "value":
						e.Value = d.name(q.v, join(g, "value"), "value")
					default:
						d.unknown(q, g, "key, value")
					}
				}
				if e.Key == "" {
					at := keyNode
					if at == nil {
						at = deref(c)
					}
					d.add(deref(at), join(g, "key"), "an exempt value needs a key")
					continue
				}
				x.values[e] = struct{}{}
				eff.Values = append(eff.Values, EffectiveEntry{Key: e.Key, Value: e.Value})
			}
		default:
			d.unknown(p, field, "paths, path_keys, private_ranges, cidrs, address_keys, values")
		}
	}
	if !pathKeysSet {
		pathKeys = []string{"path", ":path"}
	}
	if !addrKeysSet {
		addrKeys = []string{"remote_address"}
	}
	for _, k := range pathKeys {
		x.pathKeys[k] = struct{}{}
	}
	for _, k := range addrKeys {
		x.addrKeys[k] = struct{}{}
	}
	eff.PathKeys, eff.AddressKeys = pathKeys, addrKeys
	return x, eff
}

// ref decodes the name of a plan or penalty a descriptor refers to; empty is reported.
func (d *decoder) ref(n *yaml.Node, field, what, empty string) string {
	s := d.name(n, field, what)
	if v := deref(n); s == "" && (v == nil || v.Kind == yaml.ScalarNode) {
		d.add(v, field, "%s", empty)
	}
	return s
}
