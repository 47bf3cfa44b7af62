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
	qd := &quotaDraft{quotaCfg: quotaCfg{file: d.file, node: n, field: field}, ok: true}
	d.tables.quota.decode(d, n, field, qd)
	if !qd.ok {
		return nil
	}
	q := &qd.quotaCfg
	if q.name == "" {
		q.name = q.period.String()
	}
	d.quotas = append(d.quotas, q)
	return q
}

// quotaDraft is a quota as its keys are decoded, built in place.
type quotaDraft struct {
	quotaCfg
	periodNode, reqNode *yaml.Node
	ok                  bool // every key decoded and the required ones given
}

func quotaKeys() *keys[*quotaDraft] {
	type row = key[*quotaDraft]
	return newKeys("| quota key |", (*decoder).checkQuota,
		row{"name", func(d *decoder, qd *quotaDraft, p pair, f string) { qd.name = d.name(p.v, f, "name") }},
		row{"period", func(d *decoder, qd *quotaDraft, p pair, f string) {
			qd.periodNode = p.v
			s := d.str(p.v, f)
			per, err := quota.ParsePeriod(s)
			if err != nil {
				d.add(deref(p.v), f, "%v", err)
				qd.ok = false
			}
			qd.period = per
		}},
		row{"requests", func(d *decoder, qd *quotaDraft, p pair, f string) {
			qd.reqNode = p.v
			v, good := d.integer(p.v, f)
			if good && (v < 0 || v > algorithms.MaxRequests) {
				d.add(deref(p.v), f, "must be between 0 and %d, got %d", algorithms.MaxRequests, v)
				good = false
			}
			qd.ok = qd.ok && good
			qd.requests = v
		}},
		row{"time_zone", func(d *decoder, qd *quotaDraft, p pair, f string) {
			qd.locName, qd.loc = d.timeZone(p.v, f)
			qd.ok = qd.ok && qd.loc != nil
		}},
	)
}

// checkQuota requires period and requests.
func (d *decoder) checkQuota(qd *quotaDraft, n *yaml.Node, field string) {
	if qd.periodNode == nil {
		d.add(n, join(field, "period"), "a quota needs a period (hourly, daily, weekly, monthly or yearly)")
		qd.ok = false
	}
	if qd.reqNode == nil {
		d.add(n, join(field, "requests"), "a quota needs requests (0 allows nothing)")
		qd.ok = false
	}
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
		d.tables.plan.decode(d, p.v, f, pc)
		if pc.rlNode == nil && pc.rlsNode == nil && pc.policyNode == nil && pc.quotaNode == nil && pc.quotasNode == nil {
			d.add(p.k, f, "a plan needs rate_limit, rate_limits, policy or quotas")
			pc.empty = true
		}
		out = append(out, pc)
	}
	return out
}

func planKeys() *keys[*planCfg] {
	return newKeys("| plan key |", checkRules[*planCfg],
		rateLimitKey[*planCfg](false),
		rateLimitsKey[*planCfg](),
		policyKey[*planCfg](),
		quotaKey[*planCfg](),
		quotasKey[*planCfg](),
		penaltyKey[*planCfg](),
		shadowModeKey[*planCfg](),
		failureModeKey[*planCfg](),
		allowOverrideKey[*planCfg](),
		overChargeKey[*planCfg](),
		maxDebtKey[*planCfg](),
		reportOnlyKey[*planCfg](),
		idempotencyTTLKey[*planCfg](),
	)
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
	pd := &penaltyDraft{pol: &PenaltyPolicy{Name: name, Severity: 1}, ok: true}
	d.tables.penalty.decode(d, n, field, pd)
	if !pd.ok {
		return nil
	}
	if err := pd.pol.Params.Validate(algorithms.Penalty); err != nil {
		// Point at the key (the ladder step) that set the field Validate names.
		at, f := k, field
		le := limitError(err)
		switch le.Param {
		case algorithms.ParamLadder:
			at, f = pd.ladderNode, join(field, "ladder")
			if v := deref(pd.ladderNode); le.Step > 0 && le.Step <= len(v.Content) {
				at, f = v.Content[le.Step-1], fmt.Sprintf("%s[%d]", f, le.Step-1)
			}
		case algorithms.ParamPeriod:
			at, f = pd.decayNode, join(field, "decay")
		case algorithms.ParamRequests:
			at, f = pd.thrNode, join(field, "threshold")
		}
		d.add(deref(at), f, "%s", le.Msg)
		return nil
	}
	return pd.pol
}

// penaltyDraft is a penalty as its keys are decoded, before it is validated whole.
type penaltyDraft struct {
	pol                            *PenaltyPolicy
	thrNode, ladderNode, decayNode *yaml.Node
	ok                             bool // every key decoded and the required ones given
}

func penaltyKeys() *keys[*penaltyDraft] {
	type row = key[*penaltyDraft]
	// points is threshold or severity: a number of violation points.
	points := func(name string, set func(pd *penaltyDraft, p pair, v int64)) row {
		return row{name, func(d *decoder, pd *penaltyDraft, p pair, f string) {
			v, good := d.integer(p.v, f)
			if good && (v < 1 || v > algorithms.MaxRequests) {
				d.add(deref(p.v), f, "must be between 1 and %d, got %d", algorithms.MaxRequests, v)
				good = false
			}
			pd.ok = pd.ok && good
			set(pd, p, v)
		}}
	}
	return newKeys("| penalty key |", (*decoder).checkPenalty,
		points("threshold", func(pd *penaltyDraft, p pair, v int64) {
			pd.thrNode = p.v
			pd.pol.Params.Requests = v
		}),
		points("severity", func(pd *penaltyDraft, _ pair, v int64) { pd.pol.Severity = v }),
		row{"ladder", (*decoder).ladder},
		row{"decay", func(d *decoder, pd *penaltyDraft, p pair, f string) {
			pd.decayNode = p.v
			us, good := d.durationUS(p.v, f)
			pd.ok = pd.ok && good
			pd.pol.Params.Period = us
		}},
	)
}

// ladder decodes a penalty's ladder: 1 to MaxLadder increasing lockout durations.
func (d *decoder) ladder(pd *penaltyDraft, p pair, f string) {
	pol := pd.pol
	pd.ladderNode = p.v
	v := deref(p.v)
	if v == nil || v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
		d.add(p.v, f, "must be a non-empty list of lockout durations (1 to %d), got %s", algorithms.MaxLadder, kindName(v))
		pd.ok = false
		return
	}
	if len(v.Content) > algorithms.MaxLadder {
		d.add(v, f, "has %d steps; a ladder has 1 to %d", len(v.Content), algorithms.MaxLadder)
		pd.ok = false
		return
	}
	for i, c := range v.Content {
		g := fmt.Sprintf("%s[%d]", f, i)
		us, good := d.durationUS(c, g)
		if !good {
			pd.ok = false
			continue
		}
		if i > 0 && pol.Params.Ladder[i-1] > 0 && us <= pol.Params.Ladder[i-1] {
			d.add(deref(c), g, "the ladder must increase: step %d (%s) is not longer than step %d (%s)", i+1,
				time.Duration(us)*time.Microsecond, i, time.Duration(pol.Params.Ladder[i-1])*time.Microsecond)
			pd.ok = false
		}
		pol.Params.Ladder[i] = us
	}
	pol.Params.Steps = len(v.Content)
}

// checkPenalty requires threshold, ladder and decay.
func (d *decoder) checkPenalty(pd *penaltyDraft, n *yaml.Node, field string) {
	for _, x := range []struct {
		n    *yaml.Node
		name string
	}{{pd.thrNode, "threshold"}, {pd.ladderNode, "ladder"}, {pd.decayNode, "decay"}} {
		if x.n == nil {
			d.add(deref(n), join(field, x.name), "a penalty needs %s", x.name)
			pd.ok = false
		}
	}
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
	xd := &exemptDraft{
		x: &exemptions{
			paths:    map[string]struct{}{},
			pathKeys: map[string]struct{}{},
			addrKeys: map[string]struct{}{},
			values:   map[Entry]struct{}{},
		},
		eff: &EffectiveExemptions{},
	}
	d.tables.exemptions.decode(d, n, field, xd)
	x, eff := xd.x, xd.eff
	pathKeys, addrKeys := xd.pathKeys, xd.addrKeys
	if !xd.pathKeysSet {
		pathKeys = []string{"path", ":path"}
	}
	if !xd.addrKeysSet {
		addrKeys = []string{"remote_address"}
	}
	for _, k := range pathKeys {
		x.pathKeys[k] = struct{}{}
	}
	for _, k := range addrKeys {
		x.addrKeys[k] = struct{}{}
	}
	eff.PathKeys, eff.AddressKeys = pathKeys, addrKeys
	eff.PathMatch = PathMatchStrict
	if x.normalize {
		eff.PathMatch = PathMatchNormalized
	}
	return x, eff
}

// exemptDraft is an exemptions block as its keys are decoded.
type exemptDraft struct {
	x                        *exemptions
	eff                      *EffectiveExemptions
	pathKeys, addrKeys       []string
	pathKeysSet, addrKeysSet bool
}

func exemptionKeys() *keys[*exemptDraft] {
	type row = key[*exemptDraft]
	return newKeys("| exemptions key |", nil,
		row{"paths", func(d *decoder, xd *exemptDraft, p pair, f string) {
			for _, it := range d.strList(p.v, f, "paths") {
				s := it.s
				star := strings.IndexByte(s, '*')
				switch {
				case star < 0:
					xd.x.paths[s] = struct{}{}
				case star == len(s)-1:
					xd.x.prefixes = append(xd.x.prefixes, s[:star])
				default:
					d.add(it.n, it.field, "a * is only allowed at the end of a path (a prefix), got %q", s)
					continue
				}
				xd.eff.Paths = append(xd.eff.Paths, s)
			}
		}},
		row{"path_match", func(d *decoder, xd *exemptDraft, p pair, f string) {
			switch m := d.str(p.v, f); m {
			case PathMatchStrict:
			case PathMatchNormalized:
				xd.x.normalize = true
			default:
				d.add(p.v, f, "unknown path_match %q (want strict: a path is exempt only as received and in normal form, or normalized: dot segments resolved first)", m)
			}
		}},
		row{"path_keys", func(d *decoder, xd *exemptDraft, p pair, f string) {
			xd.pathKeysSet = true
			xd.pathKeys = strs(d.strList(p.v, f, "descriptor keys"))
		}},
		row{"private_ranges", func(d *decoder, xd *exemptDraft, p pair, f string) {
			xd.x.private = d.boolean(p.v, f)
			xd.eff.PrivateRanges = xd.x.private
		}},
		row{"cidrs", func(d *decoder, xd *exemptDraft, p pair, f string) {
			for _, it := range d.strList(p.v, f, "CIDRs") {
				s := it.s
				pre, err := netip.ParsePrefix(s)
				if err != nil {
					d.add(it.n, it.field, "invalid CIDR %q (want an address range such as 203.0.113.0/24 or 2001:db8::/32)", s)
					continue
				}
				pre = pre.Masked()
				xd.x.cidrs = append(xd.x.cidrs, pre)
				xd.eff.CIDRs = append(xd.eff.CIDRs, pre.String())
			}
		}},
		row{"address_keys", func(d *decoder, xd *exemptDraft, p pair, f string) {
			xd.addrKeysSet = true
			xd.addrKeys = strs(d.strList(p.v, f, "descriptor keys"))
		}},
		row{"values", (*decoder).exemptValues},
	)
}

// exemptValues decodes exemptions.values: a list of {key, value}.
func (d *decoder) exemptValues(xd *exemptDraft, p pair, f string) {
	v := deref(p.v)
	if isNull(v) {
		return
	}
	if v.Kind != yaml.SequenceNode {
		d.add(v, f, "must be a list of {key: ..., value: ...}, got %s", kindName(v))
		return
	}
	for i, c := range v.Content {
		g := fmt.Sprintf("%s[%d]", f, i)
		var vd valueDraft
		d.tables.exemptValue.decode(d, c, g, &vd)
		e := vd.e
		if e.Key == "" {
			at := vd.keyNode
			if at == nil {
				at = deref(c)
			}
			d.add(deref(at), join(g, "key"), "an exempt value needs a key")
			continue
		}
		xd.x.values[e] = struct{}{}
		xd.eff.Values = append(xd.eff.Values, EffectiveEntry(e))
	}
}

// valueDraft is one entry of exemptions.values as its keys are decoded.
type valueDraft struct {
	e       Entry
	keyNode *yaml.Node
}

func exemptValueKeys() *keys[*valueDraft] {
	type row = key[*valueDraft]
	return newKeys("", nil,
		row{"key", func(d *decoder, vd *valueDraft, p pair, f string) {
			vd.keyNode = p.v
			vd.e.Key = d.name(p.v, f, "key")
		}},
		row{"value", func(d *decoder, vd *valueDraft, p pair, f string) { vd.e.Value = d.name(p.v, f, "value") }},
	)
}

// ref decodes the name of a plan or penalty a descriptor refers to; empty is reported.
func (d *decoder) ref(n *yaml.Node, field, what, empty string) string {
	s := d.name(n, field, what)
	if v := deref(n); s == "" && (v == nil || v.Kind == yaml.ScalarNode) {
		d.add(v, field, "%s", empty)
	}
	return s
}
