package config

import (
	"net/netip"
	"path"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	// Quota calendars must not depend on the host having a zoneinfo database (a scratch
	// or distroless image may not): the zone database is embedded.
	_ "time/tzdata"

	"github.com/halt-envoy/halt-envoy/internal/quota"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// DefaultPlanName is the plan used when a request names an unknown plan and no file sets
// default_plan.
const DefaultPlanName = "free"

// The reasons Exempt reports (Exemption.Reason).
const (
	ExemptPath           = "path"            // a path key's value is an exempt path
	ExemptPrivateAddress = "private_address" // an address key's value is a private address
	ExemptCIDR           = "cidr"            // an address key's value is in an exempt CIDR
	ExemptValue          = "value"           // an entry is one of the exempt values
)

// Quota is one calendar quota of a Rule: at most Requests per calendar Period in Location.
type Quota struct {
	// Name is the quota's name, or the period's name ("monthly") when it has none.
	Name   string
	Period quota.Period
	// Requests is the number of requests allowed per period; 0 allows nothing.
	Requests int64
	// Location is the time zone of the calendar; never nil (UTC by default).
	Location *time.Location
}

// PenaltyPolicy is a resolved penalty: progressive lockout of an identity that keeps
// going over its limits.
type PenaltyPolicy struct {
	// Name is the penalty's name under penalties:.
	Name string
	// Severity is the number of violation points one over-limit answer records.
	Severity int64
	// Params is ready for algorithms.Penalty: Requests is the points threshold, Period the
	// decay (quiet period, microseconds), Ladder and Steps the lockout durations. It
	// passed Params.Validate(algorithms.Penalty).
	Params algorithms.Limit
}

// Exemption describes why a request descriptor is exempt from rate limiting.
type Exemption struct {
	// Reason is ExemptPath, ExemptPrivateAddress, ExemptCIDR or ExemptValue.
	Reason string
}

// exemptions is the compiled exemptions: block of one domain.
type exemptions struct {
	paths    map[string]struct{} // exact paths
	prefixes []string            // paths that ended in *
	pathKeys map[string]struct{}
	addrKeys map[string]struct{}
	private  bool
	cidrs    []netip.Prefix
	values   map[Entry]struct{}
	// normalize is path_match: normalized (dot segments resolved before comparing);
	// false is strict, the default: only a path already in normal form can be exempt.
	normalize bool
}

// The values of exemptions.path_match.
const (
	// PathMatchStrict exempts a path only as received, and only when it is already in
	// normal form (NormalPath): an upstream that resolves "..", "%2e" or "//" otherwise
	// than halt would serve a resource other than the one exempted.
	PathMatchStrict = "strict"
	// PathMatchNormalized resolves dot segments (CleanPath) first, so that
	// "/v1/items/../../status" is judged as "/status": right only when every upstream
	// resolves paths exactly so (Envoy's normalize_path and merge_slashes on).
	PathMatchNormalized = "normalized"
)

// CleanPath is the path as path_match: normalized judges it: rooted, and dot segments
// and repeated slashes resolved (path.Clean), so "/v1/../admin" is "/admin".
// Percent-encodings are not decoded: "%2F" never splits a segment. ext_authz matches
// its routes on it too.
func CleanPath(p string) string {
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	return path.Clean(p)
}

// NormalPath reports whether p is already in normal form, so that every upstream reads
// the same resource from it whatever it normalises: rooted, no "." or ".." segment, no
// empty segment but a trailing one, no backslash, and no percent-encoded dot, slash or
// backslash (an upstream decoding "%2e%2e" would see ".."). Strict exemptions need it.
func NormalPath(p string) bool {
	if p == "" || p[0] != '/' || strings.IndexByte(p, '\\') >= 0 {
		return false
	}
	for i := 0; i+2 < len(p); i++ {
		if p[i] != '%' {
			continue
		}
		hi, lo := p[i+1], p[i+2]|0x20 // lower-case hex digit
		if (hi == '2' && (lo == 'e' || lo == 'f')) || (hi == '5' && lo == 'c') {
			return false
		}
	}
	rest := p[1:]
	for rest != "" {
		seg, after, more := strings.Cut(rest, "/")
		if seg == "." || seg == ".." || (seg == "" && more) {
			return false
		}
		rest = after
	}
	return true
}

// isPrivate reports whether a (unmapped) is in one of the ranges private_ranges: true
// exempts (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 127.0.0.0/8, 169.254.0.0/16,
// ::1/128, fc00::/7, fe80::/10; docs/config.md lists them and TestIsPrivate checks
// against that list), without allocating.
func isPrivate(a netip.Addr) bool {
	if a.Is4() {
		b := a.As4()
		return b[0] == 10 || b[0] == 127 ||
			(b[0] == 172 && b[1]&0xf0 == 16) ||
			(b[0] == 192 && b[1] == 168) ||
			(b[0] == 169 && b[1] == 254)
	}
	if a == netip.IPv6Loopback() {
		return true
	}
	b := a.As16()
	return b[0]&0xfe == 0xfc || (b[0] == 0xfe && b[1]&0xc0 == 0x80)
}

// Exempt reports whether a request descriptor of domain is exempt from rate limiting,
// and why (ExemptPath, ExemptPrivateAddress, ExemptCIDR or ExemptValue). An entry is
// exempt when its key is a path key and its value an exempt path (the query string, from
// "?", is ignored), when its key is an address key and its value an address in a private
// range (private_ranges) or in one of the cidrs, or when the entry is one of the exempt
// values. A value that is not an IP address is simply not exempt. Exempt does not
// allocate.
func (s *Set) Exempt(dom string, entries []Entry) (reason string, ok bool) {
	if s == nil {
		return "", false
	}
	d := s.domains[dom]
	if d == nil || d.exempt == nil {
		return "", false
	}
	x := d.exempt
	for i := range entries {
		e := &entries[i]
		if len(x.values) > 0 {
			if _, hit := x.values[*e]; hit {
				return ExemptValue, true
			}
		}
		if _, hit := x.pathKeys[e.Key]; hit && (len(x.paths) > 0 || len(x.prefixes) > 0) {
			p := e.Value
			if q := strings.IndexByte(p, '?'); q >= 0 {
				p = p[:q]
			}
			if x.normalize {
				p = CleanPath(p)
			} else if !NormalPath(p) {
				continue
			}
			if _, hit := x.paths[p]; hit {
				return ExemptPath, true
			}
			for _, pre := range x.prefixes {
				if strings.HasPrefix(p, pre) {
					return ExemptPath, true
				}
			}
		}
		if _, hit := x.addrKeys[e.Key]; hit && (x.private || len(x.cidrs) > 0) {
			a, ok := parseAddr(e.Value)
			if !ok {
				continue
			}
			if x.private && isPrivate(a) {
				return ExemptPrivateAddress, true
			}
			for _, c := range x.cidrs {
				if c.Contains(a) {
					return ExemptCIDR, true
				}
			}
		}
	}
	return "", false
}

// parseAddr parses an IP address without allocating on the common paths: IPv4 is parsed
// here, and only text made of IPv6 characters reaches netip.ParseAddr (whose error
// allocates). The zone is dropped and an IPv4-mapped IPv6 address is unmapped.
func parseAddr(s string) (netip.Addr, bool) {
	if len(s) == 0 || len(s) > 64 {
		return netip.Addr{}, false // no address is that long
	}
	if b, ok := parseIPv4(s); ok {
		return netip.AddrFrom4(b), true
	}
	colon := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' {
			break // a zone: anything may follow
		}
		switch {
		case c == ':':
			colon = true
		case c == '.', '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
		default:
			return netip.Addr{}, false
		}
	}
	if !colon {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.WithZone("").Unmap(), true
}

// parseIPv4 parses dotted-decimal IPv4 as netip.ParseAddr does (four parts, no leading
// zeros).
func parseIPv4(s string) ([4]byte, bool) {
	var out [4]byte
	part, val, digits := 0, 0, 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '.' {
			if digits == 0 || part > 3 {
				return out, false
			}
			out[part] = byte(val)
			part, val, digits = part+1, 0, 0
			continue
		}
		c := s[i]
		if c < '0' || c > '9' || (digits == 1 && val == 0) {
			return out, false
		}
		val = val*10 + int(c-'0')
		digits++
		if val > 255 {
			return out, false
		}
	}
	return out, part == 4
}

// PlanNames returns the names of every plan, built-in and configured, sorted.
func (s *Set) PlanNames() []string {
	out := make([]string, 0, len(s.plans))
	for n := range s.plans {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// NormalizesPaths reports whether dom's exemptions judge paths normalized (path_match:
// normalized), for ext_authz's exempt routes: with strict matching, the default, a path
// that is not in normal form (NormalPath) is never exempt.
func (s *Set) NormalizesPaths(dom string) bool {
	if s == nil {
		return false
	}
	d := s.domains[dom]
	return d != nil && d.exempt != nil && d.exempt.normalize
}

// HasPlan reports whether name is a plan of this configuration (built-in or defined):
// a request naming any other plan is served as DefaultPlan.
func (s *Set) HasPlan(name string) bool {
	_, ok := s.plans[name]
	return ok
}

// DefaultPlan returns the plan used when a request names an unknown plan: default_plan,
// or DefaultPlanName when no file sets it.
func (s *Set) DefaultPlan() string { return s.defaultPlan }

// planDef is one resolved plan: built-in or from plans:.
type planDef struct {
	name string
	file string
	line int
	// rule holds the plan's limits, policy, shadow mode, failure mode and override flag.
	rule *Rule
	// quotas are resolved per domain (their time zone may be the domain's).
	quotas  []*quotaCfg
	penalty *PenaltyPolicy
}

// quotaCfg is one decoded quota, its time zone not yet defaulted.
type quotaCfg struct {
	name     string
	period   quota.Period
	requests int64
	loc      *time.Location // the quota's own time_zone, nil when unset
	locName  string
	fileLoc  *time.Location // the time_zone of the file it is written in, nil when unset
	file     string
	node     *yaml.Node
	field    string
}

// builtinPlans returns the built-in plans, fresh each call: token_bucket, burst =
// requests per hour, no quotas, no penalty.
func builtinPlans() []*planDef {
	mk := func(name string, perHour int64) *planDef {
		p := algorithms.Limit{Requests: perHour, Period: int64(time.Hour / time.Microsecond), Burst: perHour}
		return &planDef{name: name, file: PresetFile, rule: &Rule{
			Name: name, Path: "plan " + name, Plan: name, Cost: 1, File: PresetFile, IdentitySkip: -1,
			Limits: []Limit{{Algorithm: algorithms.TokenBucket, Unit: "hour", RequestsPerUnit: uint32(perHour), UnitMultiplier: 1, Params: p}},
		}}
	}
	return []*planDef{
		mk("free", 100),
		mk("starter", 500),
		mk("pro", 2000),
		mk("business", 5000),
		mk("enterprise", 20000),
	}
}
