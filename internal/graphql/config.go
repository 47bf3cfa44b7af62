// Package graphql prices a GraphQL request before it reaches its server, so that
// ext_authz can charge a query by what it asks for instead of one hit per call, and
// refuse the ones no limit should have to count: too deep, too many aliases, too
// expensive, too large, or not GraphQL at all.
//
// The operation is parsed with github.com/vektah/gqlparser/v2 (token- and nesting-
// bounded) and walked once: fragments are priced once each and reused at every spread,
// so a document of fragments that spread each other twice per level costs a walk of its
// text, not of its expansion. Every refusal names the rule it broke (Refusal.Rule).
// The pricing model is documented in docs/graphql.md; its worked example is a test.
package graphql

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/vektah/gqlparser/v2"
	"github.com/vektah/gqlparser/v2/ast"
	"gopkg.in/yaml.v3"
)

// Config is a route's `graphql:` block in the authz file. Zero values mean the
// defaults (Defaults); a negative number is refused.
type Config struct {
	// Schema is an SDL file (relative to the authz file): field types tell lists from
	// single objects and cost keys are checked against it. Optional.
	Schema string `yaml:"schema"`
	// MaxBodyBytes caps the request body (and a GET's query string) before anything is
	// parsed. Envoy's with_request_body.max_request_bytes should be the same number.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxTokens caps the lexical tokens of one operation's document.
	MaxTokens int `yaml:"max_tokens"`
	// MaxDepth caps how deep fields nest (a root field is at depth 1).
	MaxDepth int `yaml:"max_depth"`
	// MaxAliases caps the aliased fields of one operation, fragments counted at every spread.
	MaxAliases int `yaml:"max_aliases"`
	// MaxCost caps the cost of the request (all operations of a batch together).
	MaxCost int64 `yaml:"max_cost"`
	// MaxBatch caps the operations of a batched request (a JSON array); 1 refuses batches
	// of more than one.
	MaxBatch int `yaml:"max_batch"`
	// ObjectCost is what each object a field returns costs (a field with a selection
	// set); default 1.
	ObjectCost *int64 `yaml:"object_cost"`
	// ScalarCost is what each scalar or enum a field returns costs (a field without a
	// selection set); default 0.
	ScalarCost *int64 `yaml:"scalar_cost"`
	// DefaultListSize is the size assumed of a list whose request does not say it: a
	// list argument that is absent from the variables or not a non-negative integer, or
	// (with a schema) a list field without one. Default 10.
	DefaultListSize *int64 `yaml:"default_list_size"`
	// ListArguments are the arguments whose value is a list's size; default first, last,
	// limit.
	ListArguments []string `yaml:"list_arguments"`
	// IntrospectionCost is the flat price of an introspection field (__schema, __type):
	// its subtree adds no cost (it still counts for depth and aliases). Default 100.
	IntrospectionCost *int64 `yaml:"introspection_cost"`
	// AllowIntrospection false refuses introspection; default true.
	AllowIntrospection *bool `yaml:"allow_introspection"`
	// Costs sets the cost of one field, by "Type.field" (the type known from the schema,
	// the root operation, or an enclosing fragment's type condition) or "*.field" (that
	// field on any type without a "Type.field" entry).
	Costs map[string]int64 `yaml:"costs"`
	// ListSizes sets the assumed size of a list field that has no list argument, keyed
	// as Costs.
	ListSizes map[string]int64 `yaml:"list_sizes"`
	// PersistedQueries configures Automatic Persisted Queries.
	PersistedQueries PersistedQueries `yaml:"persisted_queries"`

	// pos is where each key was written (line, column), by its path in the block
	// ("max_cost", "costs.Query.search", "list_arguments[1]"), so that a problem is
	// reported at its line. Empty for a Config not decoded from YAML.
	pos map[string][2]int
}

// FieldError is one problem of a graphql block: Key names it in the block
// ("max_cost", "costs: Query.serch"), Line and Column say where it was written (0 when
// the Config was not decoded from YAML).
type FieldError struct {
	Key, Msg     string
	Line, Column int
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Msg }

// Position is where key (a path as FieldError.Key) was written: line and column, or
// zeros when it was not decoded from YAML.
func (c *Config) Position(key string) [2]int { return c.at(key) }

// at is the position of key, or of its nearest enclosing key that has one.
func (c *Config) at(key string) [2]int {
	for key != "" {
		if p, ok := c.pos[key]; ok {
			return p
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			break
		}
		// A table key holds dots of its own ("costs.Query.search"): its table is the
		// first segment.
		key = key[:i]
	}
	return [2]int{}
}

// UnmarshalYAML decodes a graphql block, refusing unknown keys as the rest of the file
// does (a custom decoder does not inherit the decoder's KnownFields), and keeps where
// each key was written.
func (c *Config) UnmarshalYAML(n *yaml.Node) error {
	pos := map[string][2]int{}
	if err := checkKeys(n, "graphql", reflect.TypeFor[Config](), "", pos); err != nil {
		return err
	}
	type plain Config // without this method
	if err := n.Decode((*plain)(c)); err != nil {
		return err
	}
	c.pos = pos
	return nil
}

// checkKeys refuses a key of mapping n that t (a struct with yaml tags) has no field
// for, and records every key's position under prefix; a map's and a list's entries are
// recorded too.
func checkKeys(n *yaml.Node, what string, t reflect.Type, prefix string, pos map[string][2]int) error {
	if n.Kind != yaml.MappingNode {
		return nil // n.Decode says what is wrong with it
	}
	fields := map[string]reflect.StructField{}
	var names []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag != "" && tag != "-" {
			fields[tag] = f
			names = append(names, tag)
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		f, ok := fields[k.Value]
		if !ok {
			return fmt.Errorf("line %d: field %s not found in %s (valid: %s)", k.Line, k.Value, what, strings.Join(names, ", "))
		}
		key := prefix + k.Value
		pos[key] = [2]int{k.Line, k.Column}
		switch {
		case f.Type.Kind() == reflect.Struct:
			if err := checkKeys(v, what+"."+k.Value, f.Type, key+".", pos); err != nil {
				return err
			}
		case f.Type.Kind() == reflect.Map && v.Kind == yaml.MappingNode:
			for j := 0; j+1 < len(v.Content); j += 2 {
				pos[key+"."+v.Content[j].Value] = [2]int{v.Content[j].Line, v.Content[j].Column}
			}
		case f.Type.Kind() == reflect.Slice && v.Kind == yaml.SequenceNode:
			for j, e := range v.Content {
				pos[fmt.Sprintf("%s[%d]", key, j)] = [2]int{e.Line, e.Column}
			}
		}
	}
	return nil
}

// PersistedQueries configures what a request that carries only a persisted query's
// hash (extensions.persistedQuery.sha256Hash, Apollo's APQ) is charged.
type PersistedQueries struct {
	// CacheBytes bounds the query texts remembered by hash (each seen with its hash and
	// verified) per replica and route, all tenants together; default 4 MiB. A hash-only
	// request whose text its tenant registered is priced as the text.
	CacheBytes int64 `yaml:"cache_bytes"`
	// TenantCacheBytes is one tenant's share of CacheBytes (the tenant is the identity
	// the route keys by: the customer): a tenant's registrations evict only its own
	// texts; default 64 KiB (or CacheBytes when smaller). CacheBytes / TenantCacheBytes
	// tenants are remembered at once, the one idle the longest giving way to a new one.
	TenantCacheBytes int64 `yaml:"tenant_cache_bytes"`
	// UnknownCost is the cost of a hash-only request whose text this replica has not
	// seen; default max_cost, since the server may know a text halt never priced.
	UnknownCost *int64 `yaml:"unknown_cost"`
}

// The defaults of Config.
const (
	DefaultMaxBodyBytes      = 64 << 10
	DefaultMaxTokens         = 10000
	DefaultMaxDepth          = 15
	DefaultMaxAliases        = 50
	DefaultMaxCost           = 10000
	DefaultMaxBatch          = 1
	DefaultObjectCost        = 1
	DefaultScalarCost        = 0
	DefaultListSize          = 10
	DefaultIntrospectionCost = 100
	DefaultCacheBytes        = 4 << 20
	DefaultTenantCacheBytes  = 64 << 10

	// maxSetting bounds every configured number, so that no arithmetic on them overflows
	// before saturation applies.
	maxSetting = int64(1) << 40
	// maxTableEntries bounds costs and list_sizes.
	maxTableEntries = 10000
)

// DefaultListArguments are the arguments read as a list's size when list_arguments is
// not set.
var defaultListArguments = []string{"first", "last", "limit"}

var nameRE = regexp.MustCompile(`^[_A-Za-z][_0-9A-Za-z]*$`)

// Pricer prices requests under one compiled Config. It is safe for concurrent use.
type Pricer struct {
	maxBody                                   int64
	maxTokens, maxDepth, maxAliases, maxBatch int
	maxCost, objectCost, scalarCost, listSize int64
	introspectionCost, unknownCost            int64
	allowIntrospection                        bool
	listArgs                                  []string
	costs, listSizes                          map[string]int64
	schema                                    *ast.Schema
	roots                                     [3]string // query, mutation, subscription type names
	apq                                       *cache
}

// Compile checks c and returns its Pricer. schemaSDL is the schema file's text (nil
// without one) and schemaName names it in errors. Every problem is reported, each
// naming its key (and for the schema, the file and line).
func Compile(c Config, schemaName string, schemaSDL []byte) (*Pricer, error) {
	var errs []error
	// badAt reports a problem of key (as written in errors), located at the key
	// written at path.
	badAt := func(path, key, format string, args ...any) {
		at := c.at(path)
		errs = append(errs, &FieldError{Key: key, Msg: fmt.Sprintf(format, args...), Line: at[0], Column: at[1]})
	}
	bad := func(key, format string, args ...any) { badAt(key, key, format, args...) }
	p := &Pricer{allowIntrospection: true}
	setInt := func(dst *int, v int, def int, key string) {
		switch {
		case v < 0:
			bad(key, "must not be negative, got %d", v)
		case int64(v) > maxSetting:
			bad(key, "%d is above the largest accepted, %d", v, maxSetting)
		case v == 0:
			*dst = def
		default:
			*dst = v
		}
	}
	set64 := func(dst *int64, v int64, def int64, key string) {
		switch {
		case v < 0:
			bad(key, "must not be negative, got %d", v)
		case v > maxSetting:
			bad(key, "%d is above the largest accepted, %d", v, maxSetting)
		case v == 0:
			*dst = def
		default:
			*dst = v
		}
	}
	// Costs and sizes may be 0 on purpose: a nil pointer is the default.
	setOpt := func(dst *int64, v *int64, def int64, key string) {
		*dst = def
		if v == nil {
			return
		}
		if *v < 0 || *v > maxSetting {
			bad(key, "must be between 0 and %d, got %d", maxSetting, *v)
			return
		}
		*dst = *v
	}
	set64(&p.maxBody, c.MaxBodyBytes, DefaultMaxBodyBytes, "max_body_bytes")
	setInt(&p.maxTokens, c.MaxTokens, DefaultMaxTokens, "max_tokens")
	setInt(&p.maxDepth, c.MaxDepth, DefaultMaxDepth, "max_depth")
	setInt(&p.maxAliases, c.MaxAliases, DefaultMaxAliases, "max_aliases")
	setInt(&p.maxBatch, c.MaxBatch, DefaultMaxBatch, "max_batch")
	set64(&p.maxCost, c.MaxCost, DefaultMaxCost, "max_cost")
	setOpt(&p.objectCost, c.ObjectCost, DefaultObjectCost, "object_cost")
	setOpt(&p.scalarCost, c.ScalarCost, DefaultScalarCost, "scalar_cost")
	setOpt(&p.listSize, c.DefaultListSize, DefaultListSize, "default_list_size")
	setOpt(&p.introspectionCost, c.IntrospectionCost, DefaultIntrospectionCost, "introspection_cost")
	if c.AllowIntrospection != nil {
		p.allowIntrospection = *c.AllowIntrospection
	}
	var cacheBytes int64
	set64(&cacheBytes, c.PersistedQueries.CacheBytes, DefaultCacheBytes, "persisted_queries.cache_bytes")
	setOpt(&p.unknownCost, c.PersistedQueries.UnknownCost, p.maxCost, "persisted_queries.unknown_cost")
	if p.unknownCost > p.maxCost {
		bad("persisted_queries.unknown_cost", "%d is above max_cost %d: every hash-only request would be refused", p.unknownCost, p.maxCost)
	}
	tenantBytes := min(DefaultTenantCacheBytes, cacheBytes)
	set64(&tenantBytes, c.PersistedQueries.TenantCacheBytes, tenantBytes, "persisted_queries.tenant_cache_bytes")
	if tenantBytes > cacheBytes {
		bad("persisted_queries.tenant_cache_bytes", "%d is above cache_bytes %d: one tenant's share cannot be more than the whole", tenantBytes, cacheBytes)
	}
	p.apq = newCache(cacheBytes, tenantBytes)

	p.listArgs = defaultListArguments
	if c.ListArguments != nil {
		p.listArgs = nil
		for i, a := range c.ListArguments {
			if !nameRE.MatchString(a) {
				bad(fmt.Sprintf("list_arguments[%d]", i), "%q is not a GraphQL name", a)
				continue
			}
			p.listArgs = append(p.listArgs, a)
		}
	}

	p.roots = [3]string{"Query", "Mutation", "Subscription"}
	if schemaSDL != nil {
		s, err := gqlparser.LoadSchema(&ast.Source{Name: schemaName, Input: string(schemaSDL)})
		if err != nil {
			bad("schema", "%v", err)
		} else {
			p.schema = s
			for i, d := range []*ast.Definition{s.Query, s.Mutation, s.Subscription} {
				p.roots[i] = ""
				if d != nil {
					p.roots[i] = d.Name
				}
			}
		}
	}
	p.costs = p.table("costs", c.Costs, badAt)
	p.listSizes = p.table("list_sizes", c.ListSizes, badAt)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// table checks one cost table: keys "Type.field" or "*.field" (against the schema when
// there is one), values within bounds. Problems are reported in key order, so the same
// file always reads the same.
func (p *Pricer) table(name string, t map[string]int64, badAt func(string, string, string, ...any)) map[string]int64 {
	if len(t) > maxTableEntries {
		badAt(name, name, "%d entries, the limit is %d", len(t), maxTableEntries)
		return nil
	}
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make(map[string]int64, len(t))
	for _, k := range keys {
		v := t[k]
		typ, field, ok := strings.Cut(k, ".")
		if !ok || (typ != "*" && !nameRE.MatchString(typ)) || !nameRE.MatchString(field) {
			badAt(name+"."+k, name, "key %q: want Type.field or *.field", k)
			continue
		}
		if v < 0 || v > maxSetting {
			badAt(name+"."+k, name+": "+k, "must be between 0 and %d, got %d", maxSetting, v)
			continue
		}
		if p.schema != nil {
			if err := p.checkField(typ, field); err != "" {
				badAt(name+"."+k, name+": "+k, "%s", err)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// checkField says what is wrong with a cost key against the schema ("" for nothing).
func (p *Pricer) checkField(typ, field string) string {
	if typ == "*" {
		for _, d := range p.schema.Types {
			if !strings.HasPrefix(d.Name, "__") && d.Fields.ForName(field) != nil {
				return ""
			}
		}
		return fmt.Sprintf("no type of the schema has a field %q", field)
	}
	d := p.schema.Types[typ]
	switch {
	case d == nil:
		return fmt.Sprintf("the schema has no type %q", typ)
	case d.Kind != ast.Object && d.Kind != ast.Interface:
		return fmt.Sprintf("%s is a %s, not an object or interface type", typ, strings.ToLower(string(d.Kind)))
	case d.Fields.ForName(field) == nil:
		return fmt.Sprintf("type %s has no field %q", typ, field)
	}
	return ""
}

// MaxBodyBytes is the body cap in force (the configured one or the default).
func (p *Pricer) MaxBodyBytes() int64 { return p.maxBody }
