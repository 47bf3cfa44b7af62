// Package authz is halt-envoy's Envoy external authorization server
// (envoy.service.auth.v3.Authorization/Check). Where the rate-limit filter only sends
// descriptors and hears yes or no, ext_authz sees the whole request: it turns an API key
// into a customer and a plan, checks exemptions, penalties, quotas and rate limits in one
// call through the same engine, and answers with the status, headers and body a client
// needs to come back at the right time.
package authz

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/halt-envoy/halt-envoy/internal/abuse"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/graphql"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/reload"
)

// Config is one load of the authz configuration file (and its API key file).
type Config struct {
	// Domain is the rate-limit domain whose rules, plans, quotas, penalties and
	// exemptions apply to ext_authz calls.
	Domain string `yaml:"domain"`
	// Identity lists where a caller's identity comes from, in order.
	Identity []IdentitySource `yaml:"identity"`
	// APIKeys maps SHA-256 hashes of keys to customers. Keys are never stored in clear.
	APIKeys []APIKey `yaml:"api_keys"`
	// APIKeysFile is a separate YAML file with an `api_keys:` list, relative to this
	// file; it is watched and reloaded on its own.
	APIKeysFile string `yaml:"api_keys_file"`
	// Anonymous, when set, lets callers without a valid key through as anonymous
	// customers on this plan (identified by the next identity source); unset means 401.
	Anonymous *Anonymous `yaml:"anonymous"`
	// InvalidKeyPenalty names a penalty policy (from the rate-limit config) charged to the
	// source address for every invalid API key: brute-force guessing locks out.
	InvalidKeyPenalty string `yaml:"invalid_key_penalty"`
	// IPv6AddressPrefix is the length of the IPv6 network a source address stands for
	// wherever an address is an identity (invalid_key_penalty's lockout, the fanout and
	// auth_failures detectors, the abuse lockout): 1 to 128, default
	// abuse.DefaultIPv6Prefix (64). IPv4 addresses are always keyed whole.
	IPv6AddressPrefix PrefixLen `yaml:"ipv6_address_prefix"`
	// Abuse configures the abuse detectors (internal/abuse): what they watch and the
	// penalty they feed; nil is off.
	Abuse *abuse.Config `yaml:"abuse"`
	// Routes give a request a name, a cost and optionally its own policy.
	Routes []Route `yaml:"routes"`
	// Headers lists the rate-limit header families sent: ietf, x-ratelimit (default both).
	Headers []string `yaml:"headers"`
	// UpstreamHeaders names the request headers that carry the customer and plan upstream.
	UpstreamHeaders UpstreamHeaders `yaml:"upstream_headers"`

	file     string
	keys     map[[32]byte]APIKey
	route    []compiledRoute
	families headers.Families // Headers, parsed
	// schemas are the GraphQL schema files the routes read (watched for reloads);
	// graphql is set when a route prices GraphQL.
	schemas []string
	graphql bool
	caps    Caps
	// at is where the names the rate-limit config must define were written (Resolve).
	at namesAt
}

// IdentitySource is one way to identify a caller. Exactly one field is set.
type IdentitySource struct {
	// APIKey reads a key from a header (default x-api-key) and, with Bearer, from
	// "Authorization: Bearer KEY".
	APIKey *APIKeySource `yaml:"api_key"`
	// Header is a header set by an upstream authenticator (e.g. a JWT claim forwarded by
	// Envoy's jwt_authn filter); its value is the customer id.
	Header string `yaml:"header"`
	// SourceAddress identifies the caller by its IP address.
	SourceAddress bool `yaml:"source_address"`
}

// APIKeySource says where API keys are read.
type APIKeySource struct {
	Header string `yaml:"header"`
	Bearer bool   `yaml:"bearer"`
}

// APIKey is one known key, by hash.
type APIKey struct {
	SHA256   string `yaml:"sha256"`
	Customer string `yaml:"customer"`
	Plan     string `yaml:"plan"`

	// at is where the key was written, so that a refused key is reported in its own
	// file (authz.yaml or the key file) with its line and field.
	at keyPos
}

// keyPos locates one api_keys entry: its file, its index in that file's list, and the
// line and column of the entry and of each of its fields.
type keyPos struct {
	file                       string
	index                      int
	entry, sha, customer, plan [2]int // line, column
}

// UnmarshalYAML decodes one api_keys entry, refusing unknown fields as the rest of the
// file does (a custom decoder does not inherit the decoder's KnownFields), and keeps
// where each field was written.
func (k *APIKey) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			kn := n.Content[i]
			at := [2]int{n.Content[i+1].Line, n.Content[i+1].Column}
			switch kn.Value {
			case "sha256":
				k.at.sha = at
			case "customer":
				k.at.customer = at
			case "plan":
				k.at.plan = at
			default:
				return fmt.Errorf("line %d: field %s not found in an api_keys entry (valid: sha256, customer, plan)", kn.Line, kn.Value)
			}
		}
	}
	type plain APIKey // without this method
	if err := n.Decode((*plain)(k)); err != nil {
		return err
	}
	k.at.entry = [2]int{n.Line, n.Column}
	return nil
}

// problem reports a refused key in its own file: FILE:LINE:COL: api_keys[I].FIELD: msg.
func (k *APIKey) problem(field string, format string, args ...any) error {
	at := k.at.entry
	switch field {
	case "sha256":
		at = k.at.sha
	case "customer":
		at = k.at.customer
	case "plan":
		at = k.at.plan
	}
	if at[0] == 0 {
		at = k.at.entry // a missing field: the entry
	}
	name := fmt.Sprintf("api_keys[%d]", k.at.index)
	if field != "" {
		name += "." + field
	}
	return fmt.Errorf("%s:%d:%d: %s: %s", k.at.file, at[0], at[1], name, fmt.Sprintf(format, args...))
}

// Anonymous configures callers without a valid key.
type Anonymous struct {
	Plan string `yaml:"plan"`
}

// Route matches requests by method and path.
type Route struct {
	Name   string `yaml:"name"`
	Method string `yaml:"method"`
	// Path is exact ("/v1/items"), a prefix ending in "*" ("/v1/*"), or a template with
	// {name} segments ("/v1/items/{id}").
	Path   string `yaml:"path"`
	Cost   int64  `yaml:"cost"`
	Policy string `yaml:"policy"`
	// Exempt routes are never counted (health checks).
	Exempt bool `yaml:"exempt"`
	// GraphQL prices each request by its GraphQL operation (docs/graphql.md): the cost
	// replaces Cost, and a query that breaks a limit is refused with 400. Envoy must send
	// the body (ext_authz with_request_body).
	GraphQL *graphql.Config `yaml:"graphql"`
}

// UpstreamHeaders name the headers added to the request sent upstream.
type UpstreamHeaders struct {
	Customer string `yaml:"customer"`
	Plan     string `yaml:"plan"`
	// GraphQLOperation, GraphQLCost and GraphQLHash carry a GraphQL route's operation
	// name, its cost and its persisted-query hash, for the rate-limit filter's
	// descriptors (request_headers actions) and upstream. Each is removed from a request
	// that has no value for it, so a client cannot send its own.
	GraphQLOperation string `yaml:"graphql_operation"`
	GraphQLCost      string `yaml:"graphql_cost"`
	GraphQLHash      string `yaml:"graphql_hash"`
}

type compiledRoute struct {
	Route
	re     *regexp.Regexp  // nil for exact and prefix
	pricer *graphql.Pricer // nil unless GraphQL
}

// Limits on what a config may hold, so a hostile file cannot exhaust memory.
const (
	maxRoutes  = 10000
	maxAPIKeys = 1_000_000
)

var hexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Caps bound the authz files before they are parsed: a hostile or mistaken file is
// refused after a stat (or at most the cap read), naming the file and the cap, instead
// of costing memory and CPU in proportion to its size (yaml.v3 takes about 22 times a
// key file's size while decoding it).
type Caps struct {
	// ConfigBytes bounds the authz file; zero means config.DefaultMaxFileBytes (the cap
	// of every configuration file, --max-config-bytes).
	ConfigBytes int64
	// KeysBytes bounds the API key file; zero means DefaultMaxKeysBytes.
	KeysBytes int64
}

// DefaultMaxKeysBytes is the default cap of an API key file: about 150,000 keys of ~110
// bytes each. FlagMaxKeysBytes raises it.
const (
	DefaultMaxKeysBytes = 16 << 20
	FlagMaxKeysBytes    = "--max-authz-keys-bytes"
)

func (cp Caps) config() int64 {
	if cp.ConfigBytes > 0 {
		return cp.ConfigBytes
	}
	return config.DefaultMaxFileBytes
}

func (cp Caps) keys() int64 {
	if cp.KeysBytes > 0 {
		return cp.KeysBytes
	}
	return DefaultMaxKeysBytes
}

// LoadConfig reads and validates the authz file at path (and its API key file) under the
// default Caps.
func LoadConfig(path string) (*Config, error) { return Caps{}.LoadConfig(path) }

// LoadConfig is the package's LoadConfig under cp.
func (cp Caps) LoadConfig(path string) (*Config, error) {
	data, err := reload.ReadFile(path, cp.config(), config.FlagMaxFileBytes)
	if err != nil {
		return nil, fmt.Errorf("authz config: %w", err)
	}
	c := &Config{file: path, caps: cp}
	if err := decodeStrict(path, data, c); err != nil {
		return nil, err
	}
	for i := range c.APIKeys {
		c.APIKeys[i].at.file, c.APIKeys[i].at.index = path, i
	}
	if c.APIKeysFile != "" {
		kp := c.APIKeysFile
		if !filepath.IsAbs(kp) {
			kp = filepath.Join(filepath.Dir(path), kp)
		}
		kdata, err := reload.ReadFile(kp, cp.keys(), FlagMaxKeysBytes)
		if err != nil {
			return nil, fmt.Errorf("authz api_keys_file: %w", err)
		}
		var kf struct {
			APIKeys []APIKey `yaml:"api_keys"`
		}
		if err := decodeStrict(kp, kdata, &kf); err != nil {
			return nil, err
		}
		for i := range kf.APIKeys {
			kf.APIKeys[i].at.file, kf.APIKeys[i].at.index = kp, i
		}
		c.APIKeys = append(c.APIKeys, kf.APIKeys...)
	}
	if err := c.compile(); err != nil {
		return nil, err
	}
	c.locate(data)
	return c, nil
}

// namesAt is where the names Resolve checks were written (line, column), so that a name
// the rate-limit config does not define is refused at its place.
type namesAt struct {
	abusePenalty, invalidKeyPenalty, anonymousPlan [2]int
	routePolicy                                    [][2]int // by route index
}

// locate records where the names Resolve checks were written: a second, lenient decode
// into nodes, since the strict decode cannot keep positions (a custom unmarshaler loses
// KnownFields). The file is under its cap, so this costs at most what the first decode
// did, and only a file that names something from the rate-limit config pays it.
func (c *Config) locate(data []byte) {
	if c.Abuse == nil && c.InvalidKeyPenalty == "" && c.Anonymous == nil && !c.routesNamePolicies() {
		return
	}
	var at struct {
		InvalidKeyPenalty yaml.Node `yaml:"invalid_key_penalty"`
		Anonymous         struct {
			Plan yaml.Node `yaml:"plan"`
		} `yaml:"anonymous"`
		Abuse struct {
			Penalty yaml.Node `yaml:"penalty"`
		} `yaml:"abuse"`
		Routes []struct {
			Policy yaml.Node `yaml:"policy"`
		} `yaml:"routes"`
	}
	if yaml.Unmarshal(data, &at) != nil {
		return
	}
	pos := func(n yaml.Node) [2]int { return [2]int{n.Line, n.Column} }
	c.at.abusePenalty = pos(at.Abuse.Penalty)
	c.at.invalidKeyPenalty = pos(at.InvalidKeyPenalty)
	c.at.anonymousPlan = pos(at.Anonymous.Plan)
	c.at.routePolicy = make([][2]int, len(at.Routes))
	for i, r := range at.Routes {
		c.at.routePolicy[i] = pos(r.Policy)
	}
}

func (c *Config) routesNamePolicies() bool {
	for _, r := range c.Routes {
		if r.Policy != "" {
			return true
		}
	}
	return false
}

// Resolve checks the names c takes from the rate-limit config against set:
// abuse.penalty and invalid_key_penalty must name a penalty under penalties: (or the
// abuse detectors, or the invalid-key lockout, would be silently off), a route's policy
// a policy or preset (or only the plan's limits would apply), and anonymous.plan a plan
// (or anonymous callers would be served as the default plan). A nil set (no rate-limit
// config yet, e.g. before the first xDS push) has nothing to check against and passes;
// the check runs again when one arrives. Every problem is reported, each as
// FILE:LINE:COL: FIELD: ..., as the file's other errors.
func (c *Config) Resolve(set *config.Set) error {
	if c == nil || set == nil {
		return nil
	}
	var errs []error
	bad := func(at [2]int, field, format string, args ...any) {
		if at[0] == 0 {
			at = [2]int{1, 1}
		}
		errs = append(errs, fmt.Errorf("%s:%d:%d: %s: %s", c.file, at[0], at[1], field, fmt.Sprintf(format, args...)))
	}
	if c.Abuse != nil {
		if _, ok := set.PenaltyPolicy(c.Abuse.Penalty); !ok {
			bad(c.at.abusePenalty, "abuse.penalty", "no penalty named %q under penalties: of the rate-limit config (the penalty the abuse detectors charge)", c.Abuse.Penalty)
		}
	}
	if c.InvalidKeyPenalty != "" {
		if _, ok := set.PenaltyPolicy(c.InvalidKeyPenalty); !ok {
			bad(c.at.invalidKeyPenalty, "invalid_key_penalty", "no penalty named %q under penalties: of the rate-limit config (the penalty an invalid API key charges)", c.InvalidKeyPenalty)
		}
	}
	if c.Anonymous != nil && !set.HasPlan(c.Anonymous.Plan) {
		bad(c.at.anonymousPlan, "anonymous.plan", "no plan named %q in the rate-limit config (plans: %s)", c.Anonymous.Plan, strings.Join(set.PlanNames(), ", "))
	}
	for i, r := range c.Routes {
		if r.Policy == "" {
			continue
		}
		if _, ok := set.Policy(r.Policy); !ok {
			var at [2]int
			if i < len(c.at.routePolicy) {
				at = c.at.routePolicy[i]
			}
			bad(at, fmt.Sprintf("routes[%d].policy", i), "no policy or preset named %q in the rate-limit config", r.Policy)
		}
	}
	return errors.Join(errs...)
}

// Address is source address a as this config's address identities key it
// (abuse.Address under ipv6_address_prefix).
func (c *Config) Address(a netip.Addr) (string, bool) {
	return abuse.AddressOf(a, int(c.IPv6AddressPrefix))
}

// PrefixLen is a network's prefix length in bits as the file writes it. Unset is 0 (the
// default applies); a 0 written out is refused at decoding, as any length out of range
// is at compile: taken as unset, it would silently mean the default /64 to an operator
// who asked for all of IPv6 as one address.
type PrefixLen int

// UnmarshalYAML refuses an explicit 0.
func (p *PrefixLen) UnmarshalYAML(n *yaml.Node) error {
	var v int
	if err := n.Decode(&v); err != nil {
		return err
	}
	if v == 0 {
		return fmt.Errorf("line %d: ipv6_address_prefix: must be between 1 and 128 (the IPv6 network one address identity stands for; default %d), got 0", n.Line, abuse.DefaultIPv6Prefix)
	}
	*p = PrefixLen(v)
	return nil
}

// KeysFile returns the resolved path of the API key file ("" when none).
func (c *Config) KeysFile() string {
	if c.APIKeysFile == "" || filepath.IsAbs(c.APIKeysFile) {
		return c.APIKeysFile
	}
	return filepath.Join(filepath.Dir(c.file), c.APIKeysFile)
}

// decodeStrict rejects unknown keys, wrong types and several documents, naming the file
// and the line (yaml.v3 errors carry the line).
func decodeStrict(name string, data []byte, out any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s: empty file", name)
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	var extra any
	if err := dec.Decode(&extra); err == nil {
		return fmt.Errorf("%s: more than one YAML document", name)
	}
	return nil
}

// compile checks and indexes a decoded config. Problems of the authz file itself name
// it; a refused key names its own file, line and field.
func (c *Config) compile() error {
	var errs, keyErrs []error
	if c.Domain == "" {
		errs = append(errs, errors.New("domain: required (the rate-limit domain whose rules apply)"))
	}
	if len(c.Identity) == 0 {
		c.Identity = []IdentitySource{{APIKey: &APIKeySource{Header: "x-api-key", Bearer: true}}}
	}
	for i := range c.Identity {
		s := &c.Identity[i]
		n := 0
		if s.APIKey != nil {
			n++
			if s.APIKey.Header == "" {
				s.APIKey.Header = "x-api-key"
			}
			s.APIKey.Header = strings.ToLower(s.APIKey.Header)
		}
		if s.Header != "" {
			n++
			s.Header = strings.ToLower(s.Header)
		}
		if s.SourceAddress {
			n++
		}
		if n != 1 {
			errs = append(errs, fmt.Errorf("identity[%d]: set exactly one of api_key, header, source_address", i))
		}
	}
	if len(c.APIKeys) > maxAPIKeys {
		errs = append(errs, fmt.Errorf("api_keys: %d keys (api_keys and api_keys_file together), the limit is %d", len(c.APIKeys), maxAPIKeys))
	}
	c.keys = make(map[[32]byte]APIKey, len(c.APIKeys))
	for i := range c.APIKeys {
		k := &c.APIKeys[i]
		h := strings.ToLower(k.SHA256)
		if !hexRE.MatchString(h) {
			keyErrs = append(keyErrs, k.problem("sha256", "want 64 hex digits (sha256 of the key, e.g. `printf %%s KEY | sha256sum`), never the key itself"))
			continue
		}
		if k.Customer == "" {
			keyErrs = append(keyErrs, k.problem("customer", "required"))
		}
		if len(k.Customer) > 256 {
			keyErrs = append(keyErrs, k.problem("customer", "%d bytes, the limit is 256", len(k.Customer)))
		}
		if len(k.Plan) > 256 {
			keyErrs = append(keyErrs, k.problem("plan", "%d bytes, the limit is 256", len(k.Plan)))
		}
		var sum [32]byte
		hex.Decode(sum[:], []byte(h))
		if first, dup := c.keys[sum]; dup {
			keyErrs = append(keyErrs, k.problem("sha256", "duplicate key hash %s… (first at %s:%d)", h[:8], first.at.file, first.at.sha[0]))
		}
		c.keys[sum] = *k
	}
	if c.Anonymous != nil && c.Anonymous.Plan == "" {
		errs = append(errs, errors.New("anonymous.plan: required when anonymous is set"))
	}
	if len(c.Routes) > maxRoutes {
		errs = append(errs, fmt.Errorf("routes: %d routes, the limit is %d", len(c.Routes), maxRoutes))
	}
	names := map[string]bool{}
	for i, r := range c.Routes {
		if r.Path == "" || r.Path[0] != '/' {
			errs = append(errs, fmt.Errorf("routes[%d].path: must start with /", i))
			continue
		}
		if r.Cost < 0 {
			errs = append(errs, fmt.Errorf("routes[%d].cost: must not be negative", i))
		}
		if r.GraphQL != nil && r.Cost != 0 {
			errs = append(errs, fmt.Errorf("routes[%d].cost: a graphql route is charged its operation's cost; remove cost", i))
		}
		if r.Cost == 0 {
			r.Cost = 1
		}
		r.Method = strings.ToUpper(r.Method)
		if r.Name == "" {
			r.Name = strings.TrimSpace(r.Method + " " + r.Path)
		}
		if names[r.Name] {
			errs = append(errs, fmt.Errorf("routes[%d].name: duplicate route name %q", i, r.Name))
		}
		names[r.Name] = true
		cr := compiledRoute{Route: r}
		if r.GraphQL != nil {
			p, gerrs := c.pricer(r.GraphQL)
			for _, err := range gerrs {
				// A problem at a known line is reported FILE:LINE:COL: as a key's is.
				var fe *graphql.FieldError
				if errors.As(err, &fe) && fe.Line > 0 {
					keyErrs = append(keyErrs, fmt.Errorf("%s:%d:%d: routes[%d].graphql.%w", c.file, fe.Line, fe.Column, i, err))
					continue
				}
				errs = append(errs, fmt.Errorf("routes[%d].graphql.%w", i, err))
			}
			cr.pricer = p
			c.graphql = true
		}
		if strings.Contains(r.Path, "{") {
			re, err := templateRegexp(r.Path)
			if err != nil {
				errs = append(errs, fmt.Errorf("routes[%d].path: %v", i, err))
				continue
			}
			cr.re = re
		}
		c.route = append(c.route, cr)
	}
	for _, h := range c.Headers {
		if _, err := headers.Parse(h); err != nil {
			errs = append(errs, fmt.Errorf("headers: %w", err))
		}
	}
	if c.Headers == nil {
		c.Headers = []string{"ietf", "x-ratelimit"}
	}
	c.families, _ = headers.Parse(c.Headers...) // an unknown name is an error above
	if c.UpstreamHeaders.Customer == "" {
		c.UpstreamHeaders.Customer = "x-halt-customer"
	}
	if c.UpstreamHeaders.Plan == "" {
		c.UpstreamHeaders.Plan = "x-halt-plan"
	}
	for _, h := range []struct {
		v   *string
		def string
	}{{&c.UpstreamHeaders.GraphQLOperation, "x-halt-graphql-operation"}, {&c.UpstreamHeaders.GraphQLCost, "x-halt-graphql-cost"}, {&c.UpstreamHeaders.GraphQLHash, "x-halt-graphql-hash"}} {
		if *h.v == "" {
			*h.v = h.def
		}
		*h.v = strings.ToLower(*h.v)
	}
	if c.IPv6AddressPrefix == 0 {
		c.IPv6AddressPrefix = abuse.DefaultIPv6Prefix
	}
	if c.IPv6AddressPrefix < 1 || c.IPv6AddressPrefix > 128 {
		errs = append(errs, fmt.Errorf("ipv6_address_prefix: must be between 1 and 128 (the IPv6 network one address identity stands for; default %d), got %d", abuse.DefaultIPv6Prefix, c.IPv6AddressPrefix))
	}
	if c.Abuse != nil {
		for _, err := range c.Abuse.Check() {
			// A problem at a known line is reported FILE:LINE:COL: as a key's is.
			var pe *abuse.PositionError
			if errors.As(err, &pe) && pe.Line > 0 {
				keyErrs = append(keyErrs, fmt.Errorf("%s:%d:%d: %w", c.file, pe.Line, pe.Column, err))
				continue
			}
			errs = append(errs, err)
		}
	}
	for i, err := range errs {
		errs[i] = fmt.Errorf("%s: %w", c.file, err)
	}
	return errors.Join(append(errs, keyErrs...)...)
}

// pricer compiles a route's graphql block, reading its schema file (relative to the
// authz file, under the config file cap). Each problem names its key.
func (c *Config) pricer(g *graphql.Config) (*graphql.Pricer, []error) {
	var sdl []byte
	name := ""
	if g.Schema != "" {
		name = g.Schema
		if !filepath.IsAbs(name) {
			name = filepath.Join(filepath.Dir(c.file), name)
		}
		data, err := reload.ReadFile(name, c.caps.config(), config.FlagMaxFileBytes)
		if err != nil {
			at := g.Position("schema")
			return nil, []error{&graphql.FieldError{Key: "schema", Msg: err.Error(), Line: at[0], Column: at[1]}}
		}
		sdl = data
		c.schemas = append(c.schemas, name)
	}
	p, err := graphql.Compile(*g, name, sdl)
	if err == nil {
		return p, nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return nil, j.Unwrap()
	}
	return nil, []error{err}
}

// SchemaFiles are the GraphQL schema files the config's routes read.
func (c *Config) SchemaFiles() []string { return c.schemas }

// templateRegexp turns /v1/items/{id} into ^/v1/items/[^/]+$.
func templateRegexp(tpl string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	for rest := tpl; rest != ""; {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			b.WriteString(regexp.QuoteMeta(rest))
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return nil, fmt.Errorf("unclosed { in %q", tpl)
		}
		if name := rest[i+1 : i+j]; name == "" || strings.ContainsAny(name, "/{") {
			return nil, fmt.Errorf("bad parameter name %q in %q", name, tpl)
		}
		b.WriteString(regexp.QuoteMeta(rest[:i]))
		b.WriteString("[^/]+")
		rest = rest[i+j+1:]
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// matchRoute returns the first route matching method and path.
func (c *Config) matchRoute(method, path string) *compiledRoute {
	for i := range c.route {
		r := &c.route[i]
		if r.Method != "" && r.Method != method {
			continue
		}
		switch {
		case r.re != nil:
			if r.re.MatchString(path) {
				return r
			}
		case strings.HasSuffix(r.Path, "*"):
			if strings.HasPrefix(path, strings.TrimSuffix(r.Path, "*")) {
				return r
			}
		case r.Path == path:
			return r
		}
	}
	return nil
}
