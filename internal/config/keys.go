package config

import (
	"strings"

	"gopkg.in/yaml.v3"
)

// A key is one row of a mapping's table: the key's name and the function that decodes
// its value into the entry being built (of type T), reporting what is wrong with the
// value itself at the value's position and at field (the key's path).
type key[T any] struct {
	name   string
	decode func(d *decoder, t T, p pair, field string)
}

// keys is the table of one YAML mapping of the configuration: the decoder walks it for
// every pair of the mapping, and its names are the "valid here" list of an unknown key,
// so the two cannot drift. check, when set, runs once the pairs are decoded: the rules
// between keys (exclusive keys, required keys). doc names the docs/config.md table that
// documents every key ("" for a mapping documented in its parent's row); a test keeps
// the two in step.
type keys[T any] struct {
	rows  []key[T]
	check func(d *decoder, t T, n *yaml.Node, field string)
	doc   string
}

func newKeys[T any](doc string, check func(d *decoder, t T, n *yaml.Node, field string), rows ...key[T]) *keys[T] {
	return &keys[T]{rows: rows, check: check, doc: doc}
}

// decode decodes mapping n, at field, into t: every pair by its row (an unknown key is
// reported with the valid ones), then check. A non-mapping n is reported.
func (k *keys[T]) decode(d *decoder, n *yaml.Node, field string, t T) {
	for _, p := range d.fields(n, field) {
		k.decodePair(d, p, field, t)
	}
	if k.check != nil {
		k.check(d, t, n, field)
	}
}

func (k *keys[T]) decodePair(d *decoder, p pair, field string, t T) {
	for i := range k.rows {
		if k.rows[i].name == p.key {
			k.rows[i].decode(d, t, p, join(field, p.key))
			return
		}
	}
	d.add(p.k, join(field, p.key), "unknown key (valid here: %s)", k.valid())
}

// valid returns the "valid here" list: the keys, in table order.
func (k *keys[T]) valid() string { return strings.Join(k.names(), ", ") }

// names returns the keys, in table order.
func (k *keys[T]) names() []string {
	out := make([]string, len(k.rows))
	for i, r := range k.rows {
		out[i] = r.name
	}
	return out
}

// flag is the row of a boolean key stored at ptr(t).
func flag[T any](name string, ptr func(T) *bool) key[T] {
	return key[T]{name, func(d *decoder, t T, p pair, f string) { *ptr(t) = d.boolean(p.v, f) }}
}

// tables are the tables of every mapping of a configuration file. They are built once
// per Parse and only read after: the decoder holds no global state.
type tables struct {
	file        *keys[*fileCfg]
	descriptor  *keys[*descCfg]
	rateLimit   *keys[*limitDraft]
	replace     *keys[*string]
	policy      *keys[*policyCfg]
	plan        *keys[*planCfg]
	quota       *keys[*quotaDraft]
	penalty     *keys[*penaltyDraft]
	exemptions  *keys[*exemptDraft]
	exemptValue *keys[*valueDraft]
}

func newTables() *tables {
	return &tables{
		file:        fileKeys(),
		descriptor:  descriptorKeys(),
		rateLimit:   rateLimitKeys(),
		replace:     replaceKeys(),
		policy:      policyKeys(),
		plan:        planKeys(),
		quota:       quotaKeys(),
		penalty:     penaltyKeys(),
		exemptions:  exemptionKeys(),
		exemptValue: exemptValueKeys(),
	}
}

// ---- the keys a descriptor, a plan and a policy share ----

// ruled is an entry with the shared keys: a descriptor, a plan or a policy.
type ruled interface{ rules() *ruleFields }

func (r *ruleFields) rules() *ruleFields { return r }

// rateLimitKey is rate_limit: one limit. nullLimit lets "rate_limit:" stand empty, as
// reference descriptors may.
func rateLimitKey[T ruled](nullLimit bool) key[T] {
	return key[T]{"rate_limit", func(d *decoder, t T, p pair, f string) {
		if nullLimit && isNull(deref(p.v)) {
			return
		}
		r := t.rules()
		r.rlNode = p.k
		if l := d.rateLimit(p.v, f); l != nil {
			r.limits = append(r.limits, l)
		}
	}}
}

// rateLimitsKey is rate_limits: a non-empty list of limits.
func rateLimitsKey[T ruled]() key[T] {
	return key[T]{"rate_limits", func(d *decoder, t T, p pair, f string) {
		r := t.rules()
		r.rlsNode = p.k
		r.limits = append(r.limits, d.limitList(p.v, f)...)
	}}
}

func shadowModeKey[T ruled]() key[T] {
	return flag("shadow_mode", func(t T) *bool { return &t.rules().shadow })
}

func failureModeKey[T ruled]() key[T] {
	return key[T]{"failure_mode", func(d *decoder, t T, p pair, f string) {
		t.rules().failureMode = d.failureMode(p.v, f)
	}}
}

func allowOverrideKey[T ruled]() key[T] {
	return flag("allow_algorithm_override", func(t T) *bool { return &t.rules().allowOverride })
}

// policyKey is policy: the name of a policy or preset to take the limits from.
func policyKey[T ruled]() key[T] {
	return key[T]{"policy", func(d *decoder, t T, p pair, f string) {
		r := t.rules()
		r.policy = d.name(p.v, f, "policy")
		r.policyNode = p.v
		if r.policy == "" {
			d.add(p.v, f, "must name a policy or preset")
		}
	}}
}

func quotaKey[T ruled]() key[T] {
	return key[T]{"quota", func(d *decoder, t T, p pair, f string) {
		r := t.rules()
		r.quotaNode = p.k
		if q := d.quota(p.v, f); q != nil {
			r.quotas = append(r.quotas, q)
		}
	}}
}

func quotasKey[T ruled]() key[T] {
	return key[T]{"quotas", func(d *decoder, t T, p pair, f string) {
		r := t.rules()
		r.quotasNode = p.k
		r.quotas = append(r.quotas, d.quotaList(p.v, f)...)
	}}
}

func penaltyKey[T ruled]() key[T] {
	return key[T]{"penalty", func(d *decoder, t T, p pair, f string) {
		r := t.rules()
		r.penalty = d.ref(p.v, f, "penalty name", "must name a penalty")
		r.penaltyNode = p.v
	}}
}
