package halt

import (
	"bytes"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// Config is a halt configuration: the YAML a halt-envoy server reads (domains,
// descriptors, rate limits, policies and presets, plans, quotas, penalties, exemptions),
// from files, from text, or built in code. It is only data: New reads and validates it,
// with the server's own decoder, so a configuration means the same in a Go program as
// in the Envoy mesh, and a mistake is reported as the server would (file, line, field).
type Config struct {
	path  string            // Load: a file or directory, read by New
	files map[string][]byte // YAML, Preset, Build: documents by name
	err   error             // a mistake found while building (Build)
}

// Load is the configuration in the YAML files at path: a file, or every *.yaml and *.yml
// file under a directory, as halt-envoy --config reads it. The files are read by New
// (and again on changes with WithReload).
func Load(path string) Config { return Config{path: path} }

// YAML is the configuration in one YAML document of the server's format. Problems are
// reported against the name "<yaml>".
func YAML(text string) Config {
	return Config{files: map[string][]byte{"<yaml>": []byte(text)}}
}

// PresetDomain is the domain of a Preset configuration.
const PresetDomain = "halt"

// Preset is the simplest configuration: every client address (the descriptor entry
// remote_address, which the middleware sends by default) limited by a built-in preset:
// PUBLIC_API (a token bucket of 100 a minute), AUTH_BRUTE_FORCE (5 a minute, sliding
// window), EXPENSIVE_OPERATION (10 a minute, bursts of 2), WEBHOOK (1000 a minute),
// INTERNAL_SERVICE (10,000 a second) or STRICT (10 a minute, fixed window). Its domain
// is PresetDomain. An unknown name is an error from New listing the presets.
func Preset(name string) Config {
	return Build(Domain{Name: PresetDomain, Rules: []Rule{{Key: AddressKey, Policy: name}}})
}

// Domain is one domain built in code: what one YAML file with a domain: key says.
type Domain struct {
	// Name is the domain: what Check and the middleware name, what Envoy's rate-limit
	// filter sends.
	Name string
	// Rules are the domain's descriptors, matched as the server matches Envoy's.
	Rules []Rule
	// Exemptions, when set, exempt requests from every limit of the domain.
	Exemptions *Exemptions
	// FailureMode applies to the domain's rules that do not set their own; empty means
	// the Engine's (WithFailureMode, FailOpen by default).
	FailureMode FailureMode
	// TimeZone is the calendar of the domain's quotas that name none; nil means UTC.
	TimeZone *time.Location
	// Plans defines or replaces plans (the built-in free, starter, pro, business and
	// enterprise stay unless replaced). Plans are shared by every domain.
	Plans map[string]Plan
	// DefaultPlan is the plan a request naming an unknown plan gets; empty means "free".
	DefaultPlan string
	// Penalties are defined by name for use outside any rule (a PenaltyManager, ext_authz's
	// invalid_key_penalty); a Rule's or Plan's Penalty is defined with it. Penalties are
	// shared by every domain.
	Penalties []Penalty
}

// Rule is one descriptor rule: the requests whose descriptor has the entry Key (with
// Value, or any value when Value is empty) are limited by Policy, Limits or Plan, and
// counted against Quotas; Rules are nested descriptors, matched on the next entry.
type Rule struct {
	// Key and Value are the descriptor entry matched; "*" in Value is a wildcard.
	Key, Value string
	// Policy takes the limits of a preset (Preset lists them) or of a policy defined in
	// YAML.
	Policy string
	// Limits are the rule's own rate limits, all of which must pass.
	Limits []Policy
	// Plan gives every matching request this plan's limits, quotas and penalty.
	Plan string
	// PlanFromValue makes the entry's value the plan name (Key is usually "plan"); a
	// plan that does not exist gets the default plan.
	PlanFromValue bool
	// Quotas are calendar quotas, all of which must have room.
	Quotas []Quota
	// Penalty, when set, locks out an identity that keeps going over its limits.
	Penalty *Penalty
	// Cost is what one request counts (weighted endpoints); 0 means 1.
	Cost int64
	// ShadowMode reports refusals but lets the requests through.
	ShadowMode bool
	// AllowAlgorithmOverride lets a request choose the algorithm of its limits with the
	// entry AlgorithmKey.
	AllowAlgorithmOverride bool
	// FailureMode applies when the store cannot decide this rule's limits; empty means
	// the domain's.
	FailureMode FailureMode
	// Rules are nested descriptors.
	Rules []Rule
}

// Plan is what a customer buys: limits (a Policy name or Limits), Quotas and a Penalty.
type Plan struct {
	Policy  string
	Limits  []Policy
	Quotas  []Quota
	Penalty *Penalty
}

// Exemptions let requests through uncounted: health checks, internal callers, partners.
// They apply to the descriptors' path and address entries (PathKey, AddressKey), and the
// middleware probes every request with its path and client address before anything else.
type Exemptions struct {
	// Paths are exempt paths; a trailing "*" makes a prefix. A path not in normal form
	// ("..", "//", percent-encoded dots or slashes) is never exempt.
	Paths []string
	// PrivateRanges exempts private, loopback and link-local addresses. Behind a proxy
	// that is not trusted (the middleware's TrustProxies) every client has the proxy's
	// address: turn it on only where that cannot be.
	PrivateRanges bool
	// CIDRs are exempt address ranges.
	CIDRs []netip.Prefix
	// Values are exempt descriptor entries (a health checker's user).
	Values []Entry
}

// The descriptor keys the server's configuration and the middleware agree on.
const (
	// AddressKey is the client address entry (Envoy's remote_address action).
	AddressKey = "remote_address"
	// PathKey is the request path entry, judged by exemptions' paths.
	PathKey = "path"
	// AlgorithmKey is the reserved entry with which a request asks for another algorithm
	// where its rule sets AllowAlgorithmOverride (token_bucket, fixed_window,
	// sliding_window, sliding_window_counter, leaky_bucket).
	AlgorithmKey = "halt_algorithm"
)

// Build is the configuration of domains built in code. It renders them as the YAML
// they stand for (Config.YAML shows it), which New validates as it would a file.
func Build(domains ...Domain) Config {
	c := Config{files: make(map[string][]byte, len(domains))}
	for i := range domains {
		d := &domains[i]
		f, err := d.file()
		if err != nil {
			c.err = fmt.Errorf("%w: domain %q: %v", ErrInvalid, d.Name, err)
			return c
		}
		var buf bytes.Buffer
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2) // as config.md writes it
		if err := enc.Encode(f); err != nil {
			c.err = fmt.Errorf("%w: domain %q: %v", ErrInvalid, d.Name, err)
			return c
		}
		b := buf.Bytes()
		name := "<domain " + d.Name + ">"
		if _, dup := c.files[name]; dup {
			c.err = fmt.Errorf("%w: domain %q built twice", ErrInvalid, d.Name)
			return c
		}
		c.files[name] = b
	}
	return c
}

// YAML returns the configuration's documents, by name, as the server would read them:
// a configuration built in code can be moved to the Envoy mesh's files unchanged. A
// Load configuration is read from its files.
func (c Config) YAML() (map[string]string, error) {
	if c.err != nil {
		return nil, c.err
	}
	files := c.files
	if c.path != "" {
		return nil, fmt.Errorf("%w: a Load configuration is its files at %s", ErrInvalid, c.path)
	}
	out := make(map[string]string, len(files))
	for k, v := range files {
		out[k] = string(v)
	}
	return out, nil
}

// parse validates c into a Set with the server's decoder.
func (c Config) parse() (*config.Set, error) {
	if c.err != nil {
		return nil, c.err
	}
	var set *config.Set
	var err error
	switch {
	case c.path != "":
		set, err = config.Load(c.path)
	case len(c.files) > 0:
		set, err = config.Parse(c.files)
	default:
		return nil, fmt.Errorf("%w: empty configuration (use Load, YAML, Preset or Build)", ErrInvalid)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return set, nil
}

// The YAML the model renders to: field for field the server's keys (docs/config.md).
type (
	yFile struct {
		Domain      string               `yaml:"domain"`
		FailureMode string               `yaml:"failure_mode,omitempty"`
		TimeZone    string               `yaml:"time_zone,omitempty"`
		DefaultPlan string               `yaml:"default_plan,omitempty"`
		Plans       map[string]*yPlan    `yaml:"plans,omitempty"`
		Penalties   map[string]*yPenalty `yaml:"penalties,omitempty"`
		Exemptions  *yExempt             `yaml:"exemptions,omitempty"`
		Descriptors []*yDesc             `yaml:"descriptors,omitempty"`
	}
	yDesc struct {
		Key                    string    `yaml:"key"`
		Value                  string    `yaml:"value,omitempty"`
		Policy                 string    `yaml:"policy,omitempty"`
		RateLimits             []*yLimit `yaml:"rate_limits,omitempty"`
		Plan                   string    `yaml:"plan,omitempty"`
		PlanFromValue          bool      `yaml:"plan_from_value,omitempty"`
		Quotas                 []*yQuota `yaml:"quotas,omitempty"`
		Penalty                string    `yaml:"penalty,omitempty"`
		Cost                   int64     `yaml:"cost,omitempty"`
		ShadowMode             bool      `yaml:"shadow_mode,omitempty"`
		AllowAlgorithmOverride bool      `yaml:"allow_algorithm_override,omitempty"`
		FailureMode            string    `yaml:"failure_mode,omitempty"`
		Descriptors            []*yDesc  `yaml:"descriptors,omitempty"`
	}
	yPlan struct {
		Policy     string    `yaml:"policy,omitempty"`
		RateLimits []*yLimit `yaml:"rate_limits,omitempty"`
		Quotas     []*yQuota `yaml:"quotas,omitempty"`
		Penalty    string    `yaml:"penalty,omitempty"`
	}
	yLimit struct {
		Name            string  `yaml:"name,omitempty"`
		Unit            string  `yaml:"unit"`
		UnitMultiplier  int64   `yaml:"unit_multiplier,omitempty"`
		RequestsPerUnit int64   `yaml:"requests_per_unit"`
		Algorithm       string  `yaml:"algorithm"`
		Burst           int64   `yaml:"burst,omitempty"`
		MaxDelay        string  `yaml:"max_delay,omitempty"`
		Consistency     string  `yaml:"consistency,omitempty"`
		MaxOvershoot    float64 `yaml:"max_overshoot,omitempty"`
		SyncInterval    string  `yaml:"sync_interval,omitempty"`
	}
	yQuota struct {
		Name     string `yaml:"name,omitempty"`
		Period   string `yaml:"period"`
		Requests int64  `yaml:"requests"`
		TimeZone string `yaml:"time_zone,omitempty"`
	}
	yPenalty struct {
		Threshold int64    `yaml:"threshold"`
		Severity  int64    `yaml:"severity,omitempty"`
		Ladder    []string `yaml:"ladder"`
		Decay     string   `yaml:"decay"`
	}
	yExempt struct {
		Paths         []string  `yaml:"paths,omitempty"`
		PrivateRanges bool      `yaml:"private_ranges,omitempty"`
		CIDRs         []string  `yaml:"cidrs,omitempty"`
		Values        []yLEntry `yaml:"values,omitempty"`
	}
	yLEntry struct {
		Key   string `yaml:"key"`
		Value string `yaml:"value"`
	}
)

// file renders d; it fails only where the model holds what YAML cannot say.
func (d *Domain) file() (*yFile, error) {
	f := &yFile{Domain: d.Name, FailureMode: string(d.FailureMode), DefaultPlan: d.DefaultPlan}
	pens := map[string]*yPenalty{}
	addPenalty := func(p *Penalty) (string, error) {
		if p == nil {
			return "", nil
		}
		y := p.yaml()
		name := p.name()
		if prev, ok := pens[name]; ok && !equalPenalty(prev, y) {
			return "", fmt.Errorf("penalty %q is defined twice, differently", name)
		}
		pens[name] = y
		return name, nil
	}
	for i := range d.Penalties {
		if _, err := addPenalty(&d.Penalties[i]); err != nil {
			return nil, err
		}
	}
	if d.TimeZone != nil {
		f.TimeZone = d.TimeZone.String()
	}
	if x := d.Exemptions; x != nil {
		y := &yExempt{Paths: x.Paths, PrivateRanges: x.PrivateRanges}
		for _, c := range x.CIDRs {
			y.CIDRs = append(y.CIDRs, c.String())
		}
		for _, e := range x.Values {
			y.Values = append(y.Values, yLEntry(e))
		}
		f.Exemptions = y
	}
	for _, name := range sortedNames(d.Plans) {
		p := d.Plans[name]
		yp := &yPlan{Policy: p.Policy}
		var err error
		if yp.RateLimits, err = yLimits(p.Limits); err != nil {
			return nil, fmt.Errorf("plan %q: %v", name, err)
		}
		yp.Quotas = yQuotas(p.Quotas)
		if yp.Penalty, err = addPenalty(p.Penalty); err != nil {
			return nil, err
		}
		if f.Plans == nil {
			f.Plans = map[string]*yPlan{}
		}
		f.Plans[name] = yp
	}
	var desc func(rs []Rule, at string) ([]*yDesc, error)
	desc = func(rs []Rule, at string) ([]*yDesc, error) {
		var out []*yDesc
		for i := range rs {
			r := &rs[i]
			field := fmt.Sprintf("%s[%d]", at, i)
			y := &yDesc{Key: r.Key, Value: r.Value, Policy: r.Policy, Plan: r.Plan, PlanFromValue: r.PlanFromValue,
				ShadowMode: r.ShadowMode, AllowAlgorithmOverride: r.AllowAlgorithmOverride, FailureMode: string(r.FailureMode)}
			if r.Cost != 0 {
				y.Cost = r.Cost
			}
			var err error
			if y.RateLimits, err = yLimits(r.Limits); err != nil {
				return nil, fmt.Errorf("%s: %v", field, err)
			}
			y.Quotas = yQuotas(r.Quotas)
			if y.Penalty, err = addPenalty(r.Penalty); err != nil {
				return nil, err
			}
			if y.Descriptors, err = desc(r.Rules, field+".Rules"); err != nil {
				return nil, err
			}
			out = append(out, y)
		}
		return out, nil
	}
	var err error
	if f.Descriptors, err = desc(d.Rules, "Rules"); err != nil {
		return nil, err
	}
	if len(pens) > 0 {
		f.Penalties = pens
	}
	return f, nil
}

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// yLimits renders policies as rate_limits. A period must be a whole number of seconds:
// the configuration counts in units (second to year) times unit_multiplier.
func yLimits(ps []Policy) ([]*yLimit, error) {
	var out []*yLimit
	for i := range ps {
		p := &ps[i]
		a := p.Algorithm
		if a == 0 {
			a = algorithms.TokenBucket
		}
		if p.Per <= 0 || p.Per%time.Second != 0 {
			return nil, fmt.Errorf("in Limits[%d], Per must be a whole number of seconds (the configuration's units are second to year), got %s", i, p.Per)
		}
		unit, mult := unitOf(int64(p.Per / time.Second))
		y := &yLimit{Name: p.Name, Unit: unit, RequestsPerUnit: p.Requests, Algorithm: a.String(), Burst: p.Burst}
		if mult != 1 {
			y.UnitMultiplier = mult
		}
		if p.MaxDelay != 0 {
			y.MaxDelay = p.MaxDelay.String()
		}
		if lf := p.LocalFirst; lf != nil {
			y.Consistency, y.MaxOvershoot = string(config.ConsistencyLocalFirst), lf.MaxOvershoot
			if lf.SyncInterval != 0 {
				y.SyncInterval = lf.SyncInterval.String()
			}
		}
		out = append(out, y)
	}
	return out, nil
}

// unitOf spells secs as the largest unit (up to a day) that divides it, times a
// multiplier: what the configuration's unit and unit_multiplier say.
func unitOf(secs int64) (string, int64) {
	for _, u := range [...]struct {
		name string
		secs int64
	}{{"day", 86400}, {"hour", 3600}, {"minute", 60}} {
		if secs%u.secs == 0 {
			return u.name, secs / u.secs
		}
	}
	return "second", secs
}

func yQuotas(qs []Quota) []*yQuota {
	var out []*yQuota
	for i := range qs {
		q := &qs[i]
		y := &yQuota{Name: q.Name, Period: q.Period.String(), Requests: q.Requests}
		if q.Location != nil {
			y.TimeZone = q.Location.String()
		}
		out = append(out, y)
	}
	return out
}

func (p *Penalty) yaml() *yPenalty {
	y := &yPenalty{Threshold: p.Threshold, Severity: p.Severity, Decay: p.Decay.String()}
	for _, d := range p.Ladder {
		y.Ladder = append(y.Ladder, d.String())
	}
	return y
}

func equalPenalty(a, b *yPenalty) bool {
	return a.Threshold == b.Threshold && a.Severity == b.Severity && a.Decay == b.Decay &&
		strings.Join(a.Ladder, ",") == strings.Join(b.Ladder, ",")
}
