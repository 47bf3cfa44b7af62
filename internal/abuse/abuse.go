// Package abuse holds what ext_authz's abuse detectors need beside the engine: their
// configuration (the authz file's `abuse:` block) and the record of their detections,
// which the admin API reads to say why an identity is penalised.
//
// The detectors' counts live in the store, beside the rate-limit counters
// (engine.Distinct, engine.Events), so every replica sees the same counts; the record of
// detections (which detector, when, the numbers) is kept by the replica that made them,
// bounded, since it is an explanation and not a decision.
package abuse

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"gopkg.in/yaml.v3"
)

// The detectors.
const (
	// Fanout is one source address (or identified caller) presenting many distinct
	// values of one dimension in a window: API keys or user names, as credential
	// stuffing does, or paths, as a scan does.
	Fanout = "fanout"
	// AuthFailures is a run of 401 and 403 answers to one source address in a window.
	AuthFailures = "auth_failures"
	// NetworkChange is one API key used from more networks than expected in a window: a
	// key that changed hands, or leaked.
	NetworkChange = "network_change"
	// SpikeDetector is an identity's request rate over a short window far above its own
	// moving baseline (its rate over a long window).
	SpikeDetector = "spike"
)

// Config is the authz file's `abuse:` block.
type Config struct {
	// Penalty names the penalty policy (penalties: of the rate-limit config) that
	// detections feed.
	Penalty string `yaml:"penalty"`
	// DryRun logs and records what would have been penalised, and charges nothing.
	DryRun bool `yaml:"dry_run"`
	// Fanout, AuthFailures and NetworkChange configure the detectors; nil is off.
	Fanout        *FanoutDetector `yaml:"fanout"`
	AuthFailures  *Detector       `yaml:"auth_failures"`
	NetworkChange *Network        `yaml:"network_change"`
	Spike         *Spike          `yaml:"spike"`
}

// Spike is the spike detector: the identified caller's requests in the last Window
// against Factor times what its moving baseline predicts for a Window. The baseline is
// an exponentially weighted moving average (EWMA) of the caller's request rate, with
// half-life HalfLife: a request's weight in it halves every HalfLife, so the baseline
// follows a lasting change of traffic (half of the way in one half-life) and forgets a
// burst as fast. Sampled once per Window, it is the EWMA of the per-window counts with
// alpha = 1 - 2^(-Window/HalfLife) (Alpha).
type Spike struct {
	// Window is the short window; default 1m.
	Window time.Duration `yaml:"window"`
	// HalfLife is the baseline's half-life; default 20m (the mean age of what it
	// weighs, HalfLife / ln 2, about 29m).
	HalfLife time.Duration `yaml:"half_life"`
	// Factor is how many times the baseline's rate is a spike; default 5.
	Factor float64 `yaml:"factor"`
	// Min is the requests in Window below which nothing is a spike (a new or quiet
	// identity has no baseline to speak of); default 30.
	Min int64 `yaml:"min"`
	// Severity is the points a detection charges; default 1.
	Severity int64 `yaml:"severity"`
}

// Expected is the requests in a Window that the baseline predicts, given the
// identity's exponentially decayed count (engine.Rate.Decayed, each request weighing
// 2^(-age/HalfLife)): its EWMA rate, Decayed x ln 2 / HalfLife, over a Window.
func (s *Spike) Expected(decayed float64) float64 {
	return decayed * math.Ln2 * float64(s.Window) / float64(s.HalfLife)
}

// Threshold is the requests in Window above which the caller spikes, given its decayed
// count: Factor times Expected, at least Min.
func (s *Spike) Threshold(decayed float64) float64 {
	return max(float64(s.Min), s.Factor*s.Expected(decayed))
}

// Alpha is the baseline's smoothing factor per Window: the weight of the last window's
// count when the EWMA is sampled once per Window.
func (s *Spike) Alpha() float64 {
	return 1 - math.Exp2(-float64(s.Window)/float64(s.HalfLife))
}

// Detector is a detector's window, threshold and severity.
type Detector struct {
	// Window is the counting window.
	Window time.Duration `yaml:"window"`
	// Max is how many (distinct keys, failures) pass; one more is a detection.
	Max int64 `yaml:"max"`
	// Severity is the penalty points a detection charges; default 1.
	Severity int64 `yaml:"severity"`
}

// FanoutDetector is the fanout detector: a Detector over the distinct values of one
// dimension (Count) of the requests of one identity (Per).
type FanoutDetector struct {
	Detector `yaml:",inline"`
	// Count is the dimension whose distinct values are counted (Dimensions): api_key
	// (default), user, path or header:NAME.
	Count Name `yaml:"count"`
	// Per is the identity they are counted for: remote_address (default: the source
	// address, IPv6 by its network) or customer (the identified caller).
	Per Name `yaml:"per"`
}

// The dimensions fanout counts.
const (
	// DimAPIKey is the API key presented, valid or not (by its SHA-256).
	DimAPIKey = "api_key"
	// DimUser is the user name of an "Authorization: Basic" header.
	DimUser = "user"
	// DimPath is the request's path, dot segments resolved, query dropped.
	DimPath = "path"
	// DimHeader prefixes a request header's name: the header's value ("header:x-user").
	DimHeader = "header:"
)

// Dimensions lists the dimensions fanout counts, as the config writes them.
var Dimensions = []string{DimAPIKey, DimUser, DimPath, DimHeader + "NAME"}

// StoreName is the name the detector's counts are kept under: "fanout" for API keys
// (what it has always counted), "fanout:DIMENSION" for another dimension, so that
// changing the dimension starts afresh instead of mixing values.
func (f *FanoutDetector) StoreName() string {
	if f.Count.Value == DimAPIKey {
		return Fanout
	}
	return Fanout + ":" + f.Count.Value
}

// Noun is what the detector counts, in words ("API keys", "paths").
func (f *FanoutDetector) Noun() string {
	switch v := f.Count.Value; {
	case v == DimAPIKey:
		return "API keys"
	case v == DimUser:
		return "user names"
	case v == DimPath:
		return "paths"
	default:
		return "values of header " + strings.TrimPrefix(v, DimHeader)
	}
}

// Name is a name in the config file with where it was written, so that a name that is
// not one of the valid ones is refused at its line (PositionError).
type Name struct {
	Value        string
	Line, Column int
}

// UnmarshalYAML keeps the scalar's value and position.
func (n *Name) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a name, not a %s", node.Line, kindName(node.Kind))
	}
	n.Value, n.Line, n.Column = node.Value, node.Line, node.Column
	return nil
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	}
	return "node"
}

// PositionError is a problem at a known line and column of the config file: the
// caller reports it as FILE:LINE:COL: KEY: MSG.
type PositionError struct {
	Line, Column int
	// Key is the key's path under abuse ("abuse.fanout.count").
	Key string
	Msg string
}

func (e *PositionError) Error() string { return e.Key + ": " + e.Msg }

// Network is the network_change detector: a Detector over networks, each the source
// address's prefix of these lengths.
type Network struct {
	Detector   `yaml:",inline"`
	IPv4Prefix int `yaml:"ipv4_prefix"`
	IPv6Prefix int `yaml:"ipv6_prefix"`
}

// DefaultHalfLife is the spike baseline's half-life when none is given.
const DefaultHalfLife = 20 * time.Minute

// MaxCount is a count no detector reaches: the max of a marker that only tells new
// from seen.
const MaxCount = int64(1) << 40

// maxWindow bounds a window: a counter kept longer than a day is a quota, not a detector.
const maxWindow = 24 * time.Hour

// Check validates c, filling defaults; each problem names its key under "abuse.".
func (c *Config) Check() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("abuse."+format, args...)) }
	if c.Penalty == "" {
		bad("penalty: required (a penalty policy of the rate-limit config, which detections feed)")
	}
	det := func(name string, d *Detector) {
		if d.Window <= 0 || d.Window > maxWindow || d.Window%time.Second != 0 {
			bad("%s.window: must be whole seconds between 1s and 24h, got %s", name, d.Window)
		}
		if d.Max < 1 || d.Max > 1<<20 {
			bad("%s.max: must be between 1 and %d, got %d", name, 1<<20, d.Max)
		}
		if d.Severity == 0 {
			d.Severity = 1
		}
		if d.Severity < 1 || d.Severity > 1<<20 {
			bad("%s.severity: must be between 1 and %d, got %d", name, 1<<20, d.Severity)
		}
	}
	if f := c.Fanout; f != nil {
		det(Fanout, &f.Detector)
		at := func(n Name, key, format string, args ...any) {
			errs = append(errs, &PositionError{Line: n.Line, Column: n.Column, Key: "abuse.fanout." + key, Msg: fmt.Sprintf(format, args...)})
		}
		if f.Count.Value == "" {
			f.Count.Value = DimAPIKey
		}
		switch v := f.Count.Value; {
		case v == DimAPIKey, v == DimUser, v == DimPath:
		case strings.HasPrefix(v, DimHeader) && httpguts.ValidHeaderFieldName(v[len(DimHeader):]):
			f.Count.Value = strings.ToLower(v)
		default:
			at(f.Count, "count", "unknown dimension %q (valid: %s)", v, strings.Join(Dimensions, ", "))
		}
		if f.Per.Value == "" {
			f.Per.Value = AddressKey
		}
		if f.Per.Value != AddressKey && f.Per.Value != CustomerKey {
			at(f.Per, "per", "unknown identity %q (valid: %s, %s)", f.Per.Value, AddressKey, CustomerKey)
		}
	}
	if c.AuthFailures != nil {
		det(AuthFailures, c.AuthFailures)
	}
	if n := c.NetworkChange; n != nil {
		det(NetworkChange, &n.Detector)
		if n.IPv4Prefix == 0 {
			n.IPv4Prefix = 24
		}
		if n.IPv6Prefix == 0 {
			n.IPv6Prefix = 48
		}
		if n.IPv4Prefix < 1 || n.IPv4Prefix > 32 {
			bad("network_change.ipv4_prefix: must be between 1 and 32, got %d", n.IPv4Prefix)
		}
		if n.IPv6Prefix < 1 || n.IPv6Prefix > 128 {
			bad("network_change.ipv6_prefix: must be between 1 and 128, got %d", n.IPv6Prefix)
		}
	}
	if sp := c.Spike; sp != nil {
		if sp.Window == 0 {
			sp.Window = time.Minute
		}
		if sp.HalfLife == 0 {
			sp.HalfLife = DefaultHalfLife
		}
		if sp.Factor == 0 {
			sp.Factor = 5
		}
		if sp.Min == 0 {
			sp.Min = 30
		}
		if sp.Severity == 0 {
			sp.Severity = 1
		}
		switch {
		case sp.Window < time.Second || sp.Window%time.Second != 0:
			bad("spike.window: must be whole seconds, at least 1s, got %s", sp.Window)
		case sp.HalfLife < sp.Window || sp.HalfLife > 7*maxWindow || sp.HalfLife%time.Second != 0:
			bad("spike.half_life: must be whole seconds, at least window (%s) and at most 168h, got %s", sp.Window, sp.HalfLife)
		case sp.Factor > 1 && sp.Factor*sp.Window.Seconds()*math.Ln2 >= sp.HalfLife.Seconds():
			// The window's own requests are in the baseline: with factor x window at or
			// past the baseline's mean age (half_life / ln 2), no burst could outgrow
			// the threshold it raises.
			bad("spike.half_life: %s is too short for factor %g over window %s: a spike could never be detected (want above factor x window x ln 2 = %s)",
				sp.HalfLife, sp.Factor, sp.Window, time.Duration(sp.Factor*float64(sp.Window)*math.Ln2).Round(time.Second))
		}
		if !(sp.Factor > 1) || sp.Factor > 1e6 {
			bad("spike.factor: must be above 1 (a spike is that many times the baseline's rate) and at most 1e6, got %g", sp.Factor)
		}
		if sp.Min < 1 || sp.Min > 1<<30 {
			bad("spike.min: must be between 1 and %d, got %d", 1<<30, sp.Min)
		}
		if sp.Severity < 1 || sp.Severity > 1<<20 {
			bad("spike.severity: must be between 1 and %d, got %d", 1<<20, sp.Severity)
		}
	}
	if c.Fanout == nil && c.AuthFailures == nil && c.NetworkChange == nil && c.Spike == nil {
		bad("penalty: no detector is configured (fanout, auth_failures, network_change, spike)")
	}
	return errs
}

// The identities the detectors and lockouts charge, as the keys of their one-entry
// descriptors: ext_authz charges them and the admin API reads them by these names.
const (
	// AddressKey is the source address, keyed by Address (invalid_key_penalty's lockout,
	// fanout, auth_failures).
	AddressKey = "remote_address"
	// APIKeyKey is the API key by its SHA-256 in lower-case hex, as in the key file
	// (network_change).
	APIKeyKey = "api_key_sha256"
	// CustomerKey is the identified caller (spike), as a plan's penalty charges it.
	CustomerKey = "customer"
)

// DefaultIPv6Prefix is the length of the IPv6 network one address identity stands for.
// A /64 is the smallest network a provider hands one subscriber, one host or one cloud
// instance, and every address in it is the holder's to pick: keyed by the exact address,
// a client rotating through its /64 would be a new identity at every call and never be
// locked out.
const DefaultIPv6Prefix = 64

// Address is source address a as the address-keyed detectors and lockouts charge it,
// and false when a is not an IP address: an IPv4 address (or an IPv4-mapped IPv6 one)
// as its canonical text ("203.0.113.9"), an IPv6 address as its network of ipv6Prefix
// bits ("2001:db8:1:2::/64"; a prefix outside 1..128 means DefaultIPv6Prefix), zone
// dropped. It is the one keying of an address: ext_authz charges a source address so,
// and the admin API reads an operator's spelling of any address of the network so, so
// that both name one identity.
func Address(a string, ipv6Prefix int) (string, bool) {
	ip, err := netip.ParseAddr(a)
	if err != nil {
		return "", false
	}
	return AddressOf(ip, ipv6Prefix)
}

// AddressOf is Address of an address already parsed (false for the zero Addr), so that
// a caller holding one (ext_authz, once per call) does not format and parse it again.
func AddressOf(ip netip.Addr, ipv6Prefix int) (string, bool) {
	if !ip.IsValid() {
		return "", false
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return ip.String(), true
	}
	if ipv6Prefix < 1 || ipv6Prefix > 128 {
		ipv6Prefix = DefaultIPv6Prefix
	}
	p, err := ip.Prefix(ipv6Prefix)
	if err != nil {
		return "", false
	}
	return p.String(), true
}

// Identity is an operator's spelling of the identity key=value (AddressKey, APIKeyKey
// or CustomerKey) as the detectors charge it: any address of the network or the
// network itself as the detectors write it ("2001:db8:1:2::/64", copied from a
// detection), also as the customer of a caller known by its address ("ip:ADDR"), a
// hash in capitals. Another spelling would read and lift a lockout nobody has. The error
// says what is wrong with value, for the operator.
func Identity(key, value string, ipv6Prefix int) (string, error) {
	switch key {
	case AddressKey:
		a, ok := addressOrNetwork(value, ipv6Prefix)
		if !ok {
			if len(value) > 64 {
				value = value[:64] + "..."
			}
			return "", fmt.Errorf("%s %q is not an IP address", AddressKey, value)
		}
		return a, nil
	case APIKeyKey:
		if _, err := hex.DecodeString(value); err != nil || len(value) != 2*sha256.Size {
			return "", fmt.Errorf("%s must be the key's SHA-256 in 64 hex digits, as in the key file", APIKeyKey)
		}
		return strings.ToLower(value), nil
	case CustomerKey:
		// ext_authz's source_address customer is "ip:" and the address as Address keys
		// it; any other customer is taken as written.
		if rest, ok := strings.CutPrefix(value, "ip:"); ok {
			if a, ok := addressOrNetwork(rest, ipv6Prefix); ok {
				return "ip:" + a, nil
			}
		}
		return value, nil
	}
	return "", ErrNotIdentity
}

// addressOrNetwork is a, an address or a network as Address writes one, as Address
// keys it; false for anything else: a network of another length, or with host bits
// ("2001:db8::9/64"), names no identity.
func addressOrNetwork(a string, ipv6Prefix int) (string, bool) {
	if n, ok := Address(a, ipv6Prefix); ok {
		return n, true
	}
	if p, err := netip.ParsePrefix(a); err == nil && p == p.Masked() {
		if n, ok := Address(p.Addr().String(), ipv6Prefix); ok && n == p.String() {
			return n, true
		}
	}
	return "", false
}

// ErrNotIdentity is Identity's answer to a key that names no identity the detectors
// charge.
var ErrNotIdentity = errors.New("not an identity the abuse detectors charge (" + AddressKey + ", " + APIKeyKey + " or " + CustomerKey + ")")

// NetworkOf is the network of address a under n's prefix lengths ("" for an address
// that does not parse).
func (n *Network) NetworkOf(a string) string {
	ip, err := netip.ParseAddr(a)
	if err != nil {
		return ""
	}
	ip = ip.Unmap()
	bits := n.IPv6Prefix
	if ip.Is4() {
		bits = n.IPv4Prefix
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return ""
	}
	return p.String()
}

// Detection is one detector firing: the explanation the admin API gives.
type Detection struct {
	Detector string    `json:"detector"`
	At       time.Time `json:"at"`
	// Identity is the identity the penalty was charged to ("remote_address=…",
	// "api_key_sha256=…", the key's hash prefix).
	Identity string `json:"identity"`
	// Count is what the detector counted in its window (distinct keys, failures,
	// networks), past Max.
	Count  int64  `json:"count"`
	Max    int64  `json:"max"`
	Window string `json:"window"`
	// Severity is the points charged (none in dry run).
	Severity int64 `json:"severity"`
	DryRun   bool  `json:"dry_run"`
	// Locked reports the charge locked the identity out.
	Locked bool `json:"locked"`
	// Detail says what the numbers are, in words.
	Detail string `json:"detail"`
}

// Record keeps the last detections of each identity (PerIdentity of them) for the most
// recently detected identities (at most Identities), so that a flood of identities
// cannot grow it.
type Record struct {
	mu         sync.Mutex
	perID, max int
	order      *list.List // of *entry, most recent at the front
	byID       map[string]*list.Element
}

type entry struct {
	key string
	ds  []Detection
}

// NewRecord returns a record of perIdentity detections for up to identities identities.
func NewRecord(identities, perIdentity int) *Record {
	return &Record{perID: perIdentity, max: identities, order: list.New(), byID: map[string]*list.Element{}}
}

func recordKey(domain, identity string) string { return domain + "\x00" + identity }

// Add records d for domain.
func (r *Record) Add(domain string, d Detection) {
	k := recordKey(domain, d.Identity)
	r.mu.Lock()
	defer r.mu.Unlock()
	el, ok := r.byID[k]
	if !ok {
		for r.order.Len() >= r.max {
			last := r.order.Back()
			r.order.Remove(last)
			delete(r.byID, last.Value.(*entry).key)
		}
		el = r.order.PushFront(&entry{key: k})
		r.byID[k] = el
	}
	r.order.MoveToFront(el)
	e := el.Value.(*entry)
	e.ds = append(e.ds, d)
	if len(e.ds) > r.perID {
		e.ds = append(e.ds[:0], e.ds[len(e.ds)-r.perID:]...)
	}
}

// Get returns the recorded detections of identity in domain, oldest first.
func (r *Record) Get(domain, identity string) []Detection {
	r.mu.Lock()
	defer r.mu.Unlock()
	el, ok := r.byID[recordKey(domain, identity)]
	if !ok {
		return nil
	}
	return append([]Detection(nil), el.Value.(*entry).ds...)
}
