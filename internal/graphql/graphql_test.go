package graphql

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// example compiles the graphql block of the shipped example route
// (examples/authz/graphql.yaml with its schema).
func example(t testing.TB) *Pricer {
	t.Helper()
	dir := filepath.Join("..", "..", "examples", "authz")
	data, err := os.ReadFile(filepath.Join(dir, "graphql.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Routes []struct {
			Path    string  `yaml:"path"`
			GraphQL *Config `yaml:"graphql"`
		} `yaml:"routes"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	for _, r := range f.Routes {
		if r.GraphQL == nil {
			continue
		}
		sdl, err := os.ReadFile(filepath.Join(dir, r.GraphQL.Schema))
		if err != nil {
			t.Fatal(err)
		}
		p, err := Compile(*r.GraphQL, r.GraphQL.Schema, sdl)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Fatal("examples/authz/graphql.yaml has no graphql route")
	return nil
}

func compile(t testing.TB, c Config, sdl string) *Pricer {
	t.Helper()
	var b []byte
	if sdl != "" {
		b = []byte(sdl)
	}
	p, err := Compile(c, "schema.graphql", b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func post(query string, vars string) Request {
	body := map[string]any{"query": query}
	if vars != "" {
		body["variables"] = json.RawMessage(vars)
	}
	b, _ := json.Marshal(body)
	return Request{Method: "POST", ContentType: "application/json", Body: b}
}

func mustPrice(t *testing.T, p *Pricer, r Request) Result {
	t.Helper()
	res, err := p.Price(r)
	if err != nil {
		t.Fatalf("Price: %v", err)
	}
	return res
}

func refusedBy(t *testing.T, p *Pricer, r Request, rule string) *Refusal {
	t.Helper()
	_, err := p.Price(r)
	var rf *Refusal
	if !errors.As(err, &rf) {
		t.Fatalf("want a refusal by %s, got %v", rule, err)
	}
	if rf.Rule != rule {
		t.Fatalf("refused by %s (%s), want %s", rf.Rule, rf.Detail, rule)
	}
	return rf
}

// TestWorkedExample prices every ```graphql block of docs/graphql.md with the example
// route: a block says its cost (# cost: N) or the rule that refuses it (# refused:
// RULE), and its variables (# variables: JSON). The page and the code cannot disagree.
func TestWorkedExample(t *testing.T) {
	p := example(t)
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "graphql.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```graphql\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	costs, refusals := 0, 0
	for i, b := range blocks {
		q := b[1]
		var want int64 = -1
		rule, vars := "", ""
		for _, line := range strings.Split(q, "\n") {
			switch {
			case strings.HasPrefix(line, "# cost: "):
				want, _ = strconv.ParseInt(strings.TrimPrefix(line, "# cost: "), 10, 64)
			case strings.HasPrefix(line, "# refused: "):
				rule = strings.TrimPrefix(line, "# refused: ")
			case strings.HasPrefix(line, "# variables: "):
				vars = strings.TrimPrefix(line, "# variables: ")
			}
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			switch {
			case rule != "":
				refusals++
				refusedBy(t, p, post(q, vars), rule)
			case want >= 0:
				costs++
				if got := mustPrice(t, p, post(q, vars)); got.Cost != want {
					t.Errorf("docs/graphql.md block %d costs %d, the page says %d:\n%s", i, got.Cost, want, q)
				}
			default:
				t.Errorf("block %d says neither # cost: nor # refused:\n%s", i, q)
			}
		})
	}
	if costs < 9 || refusals < 5 {
		t.Fatalf("docs/graphql.md: %d priced and %d refused examples, want at least 9 and 5", costs, refusals)
	}
}

const schema = `
type Query { me: User users(first: Int): [User!]! node(id: ID!): Node }
type Mutation { like(id: ID!): Int }
interface Node { id: ID! }
type User implements Node { id: ID! name: String! friends(first: Int, last: Int): [User!]! posts: [Post!]! }
type Post implements Node { id: ID! title: String! }
`

func TestDefaultModelWithoutSchema(t *testing.T) {
	p := compile(t, Config{}, "")
	for _, c := range []struct {
		q    string
		vars string
		want int64
	}{
		{`{ me { id } }`, "", 1},
		{`{ users { name } }`, "", 1}, // not known to be a list
		{`{ users(first: 10) { name } }`, "", 10},
		{`{ users(first: 10) { friends(first: 5) { name } } }`, "", 10 * (1 + 5)},
		{`{ users(first: 3, last: 7) { id } }`, "", 7},            // the largest list argument
		{`query($n: Int) { users(first: $n) { id } }`, "", 10},    // no value: default_list_size
		{`query($n: Int = 4) { users(first: $n) { id } }`, "", 4}, // the variable's default
		{`query($n: Int = 4) { users(first: $n) { id } }`, `{"n": 6}`, 6},
		{`query($n: Int) { users(first: $n) { id } }`, `{"n": "6"}`, 10}, // not an integer
		{`query($n: Int) { users(first: $n) { id } }`, `{"n": -3}`, 10},
		{`query($n: Int) { users(first: $n) { id } }`, `{"n": 2.0}`, 2},
		{`query($n: Int) { users(first: $n) { id } }`, `{"n": null}`, 10},
		{`{ users(first: 0) { friends(first: 100) { id } } }`, "", 1}, // 0 items: at least 1
		{`{ serverTime }`, "", 1},                                     // scalars are free; at least 1
		{`{ a: me { id } b: me { id } }`, "", 2},
		{`{ me { ...F ...F } } fragment F on User { friends(first: 2) { id } }`, "", 1 + 2 + 2},
		{`{ me { ... { friends(first: 2) { id } } } }`, "", 3},
		{`{ __type(name: "User") { name fields { name } } }`, "", 100},
		{`mutation { like(id: 1) }`, "", 1},
	} {
		if got := mustPrice(t, p, post(c.q, c.vars)); got.Cost != c.want {
			t.Errorf("%s %s: cost %d, want %d", c.q, c.vars, got.Cost, c.want)
		}
	}
}

func TestSchemaCostsAndKeys(t *testing.T) {
	ten, zero := int64(10), int64(0)
	p := compile(t, Config{
		Costs:      map[string]int64{"User.friends": 3, "*.id": 2, "Mutation.like": 7},
		ListSizes:  map[string]int64{"User.posts": 4},
		ScalarCost: &zero, DefaultListSize: &ten,
	}, schema)
	for _, c := range []struct {
		q    string
		want int64
	}{
		{`{ users { name } }`, 10},                           // a list of the schema: default_list_size
		{`{ me { friends(first: 2) { id } } }`, 1 + 2*(3+2)}, // User.friends own 3, *.id 2
		{`{ me { posts { title } } }`, 1 + 4},                // list_sizes
		{`{ node(id: 1) { ... on User { posts { id } } } }`, 1 + 4*(1+2)},
		{`mutation { like(id: 1) }`, 7},
	} {
		if got := mustPrice(t, p, post(c.q, "")); got.Cost != c.want {
			t.Errorf("%s: cost %d, want %d", c.q, got.Cost, c.want)
		}
	}
	// Without a schema, Type.field applies where the type is known: the root and a
	// type condition.
	p = compile(t, Config{Costs: map[string]int64{"User.friends": 3, "Query.me": 5}}, "")
	if got := mustPrice(t, p, post(`{ me { friends { id } ... on User { friends { id } } } }`, "")).Cost; got != 5+1+3 {
		t.Errorf("without a schema: cost %d, want %d", got, 5+1+3)
	}
}

func TestOperationsAndRequests(t *testing.T) {
	p := compile(t, Config{MaxBatch: 3}, "")
	doc := `query A { me { id } } query B { users(first: 4) { id } }`
	b, _ := json.Marshal(map[string]any{"query": doc, "operationName": "B"})
	res := mustPrice(t, p, Request{Method: "POST", Body: b})
	if res.Cost != 4 || res.Operations[0].Name != "B" || res.Operations[0].Type != "query" {
		t.Errorf("operationName B: %+v", res)
	}
	refusedBy(t, p, post(doc, ""), RuleOperation)
	b, _ = json.Marshal(map[string]any{"query": doc, "operationName": "C"})
	refusedBy(t, p, Request{Method: "POST", Body: b}, RuleOperation)

	// GET with URL parameters.
	v := url.Values{"query": {`query Q($n: Int) { users(first: $n) { id } }`}, "variables": {`{"n": 7}`}}
	if res := mustPrice(t, p, Request{Method: "GET", RawQuery: v.Encode()}); res.Cost != 7 || res.Operations[0].Name != "Q" {
		t.Errorf("GET: %+v", res)
	}
	// application/graphql.
	if res := mustPrice(t, p, Request{Method: "POST", ContentType: "application/graphql; charset=utf-8", Body: []byte(`{ users(first: 2) { id } }`)}); res.Cost != 2 {
		t.Errorf("application/graphql: %+v", res)
	}
	// Variables as a JSON string.
	b, _ = json.Marshal(map[string]any{"query": `query($n: Int) { users(first: $n) { id } }`, "variables": `{"n": 3}`})
	if res := mustPrice(t, p, Request{Method: "POST", Body: b}); res.Cost != 3 {
		t.Errorf("variables as a string: %+v", res)
	}
	// A batch: costs summed, names kept in order.
	batch := `[{"query":"query A { users(first: 2) { id } }"},{"query":"query B { users(first: 3) { id } }"}]`
	res = mustPrice(t, p, Request{Method: "POST", Body: []byte(batch)})
	if res.Cost != 5 || len(res.Operations) != 2 || res.Operations[1].Name != "B" {
		t.Errorf("batch: %+v", res)
	}
	refusedBy(t, p, Request{Method: "POST", Body: []byte(`[` + strings.Repeat(`{"query":"{a}"},`, 3) + `{"query":"{a}"}]`)}, RuleBatch)
	refusedBy(t, p, Request{Method: "POST", Body: []byte(`[]`)}, RuleSyntax)
	refusedBy(t, compile(t, Config{}, ""), Request{Method: "POST", Body: []byte(batch)}, RuleBatch)
}

func TestPersistedQueries(t *testing.T) {
	unknown := int64(500)
	p := compile(t, Config{MaxCost: 1000, PersistedQueries: PersistedQueries{UnknownCost: &unknown}}, "")
	q := `query Top { users(first: 20) { id } }`
	sum := sha256.Sum256([]byte(q))
	h := hex.EncodeToString(sum[:])
	ext := func(hash string) json.RawMessage {
		return json.RawMessage(`{"persistedQuery":{"version":1,"sha256Hash":"` + hash + `"}}`)
	}
	hashOnly := func(hash, name string) Request {
		b, _ := json.Marshal(map[string]any{"operationName": name, "extensions": ext(hash)})
		return Request{Method: "POST", Body: b}
	}
	// Unknown: unknown_cost, the client's operation name if it is a GraphQL name.
	res := mustPrice(t, p, hashOnly(h, "Top"))
	if res.Cost != 500 || res.Operations[0].Source != "unknown" || res.Operations[0].Hash != h || res.Operations[0].Name != "Top" {
		t.Errorf("unknown hash: %+v", res)
	}
	if res := mustPrice(t, p, hashOnly(h, "not a name")); res.Operations[0].Name != "" {
		t.Errorf("a name that is not GraphQL's must not be passed on: %+v", res)
	}
	// A wrong hash with its query is refused and not remembered.
	b, _ := json.Marshal(map[string]any{"query": q, "extensions": ext(strings.Repeat("ab", 32))})
	refusedBy(t, p, Request{Method: "POST", Body: b}, RulePersistedQuery)
	refusedBy(t, p, hashOnly("xyz", ""), RulePersistedQuery)
	if p.apq.len() != 0 {
		t.Fatal("a refused text was remembered")
	}
	// Registered with its query: priced, then remembered.
	b, _ = json.Marshal(map[string]any{"query": q, "extensions": ext(strings.ToUpper(h))})
	if res := mustPrice(t, p, Request{Method: "POST", Body: b}); res.Cost != 20 || res.Operations[0].Hash != h {
		t.Errorf("registration: %+v", res)
	}
	res = mustPrice(t, p, hashOnly(h, ""))
	if res.Cost != 20 || res.Operations[0].Source != "cache" || res.Operations[0].Name != "Top" {
		t.Errorf("remembered hash: %+v", res)
	}
	// The cache keeps its byte budget, least recently used out.
	c := newCache(200, 200)
	for i := 0; i < 10; i++ {
		c.put("", fmt.Sprintf("%064d", i), strings.Repeat("x", 36)) // 100 bytes each
	}
	if c.len() != 2 || c.bytes() > 200 {
		t.Errorf("cache holds %d entries, %d bytes", c.len(), c.bytes())
	}
	if _, ok := c.get("", fmt.Sprintf("%064d", 9)); !ok {
		t.Error("the newest entry is gone")
	}
	c.put("", "big", strings.Repeat("x", 300))
	if _, ok := c.get("", "big"); ok {
		t.Error("an entry larger than the budget was kept")
	}
}

func TestHostile(t *testing.T) {
	p := compile(t, Config{}, "")
	deep := "{" + strings.Repeat("a{", 40) + "b" + strings.Repeat("}", 41)
	refusedBy(t, p, post(deep, ""), RuleDepth)
	// Deeper than the parser nests: still named max_depth.
	deeper := "{" + strings.Repeat("a{", 5000) + "b" + strings.Repeat("}", 5001)
	refusedBy(t, compile(t, Config{MaxBodyBytes: 1 << 20, MaxTokens: 20000}, ""), post(deeper, ""), RuleDepth)
	// Aliases, also through a fragment spread many times.
	var b strings.Builder
	b.WriteString("{")
	for i := 0; i < 60; i++ {
		fmt.Fprintf(&b, "a%d: me { id } ", i)
	}
	b.WriteString("}")
	refusedBy(t, p, post(b.String(), ""), RuleAliases)
	refusedBy(t, p, post(`{ me { ...F ...F ...F ...F ...F ...F } } fragment F on User { a: id b: id c: id d: id e: id f: id g: id h: id i: id j: id }`, ""), RuleAliases)
	// Fragments that spread each other twice per level: 2^30 expansions, priced once each.
	var f strings.Builder
	f.WriteString("{ ...F0 }\n")
	for i := 0; i < 30; i++ {
		fmt.Fprintf(&f, "fragment F%d on Query { ...F%d ...F%d }\n", i, i+1, i+1)
	}
	f.WriteString("fragment F30 on Query { users(first: 1) { id } }\n")
	refusedBy(t, p, post(f.String(), ""), RuleCost)
	refusedBy(t, p, post(`{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }`, ""), RuleFragment)
	refusedBy(t, p, post(`{ ...A } fragment A on Query { ...A }`, ""), RuleFragment)
	refusedBy(t, p, post(`{ ...Missing }`, ""), RuleFragment)
	// Tokens.
	refusedBy(t, compile(t, Config{MaxTokens: 100}, ""), post("{"+strings.Repeat("a ", 200)+"}", ""), RuleTokens)
	// Lists that multiply past any number: saturated, refused by max_cost.
	refusedBy(t, p, post(`{ a(first: 99999999999999999999999) { b(first: 999999999) { c(first: 999999999) { d(first: 999999999) { id } } } } }`, ""), RuleCost)
	// 10 MB: refused by its size before a byte is parsed.
	huge := bytes.Repeat([]byte("a"), 10<<20)
	refusedBy(t, p, Request{Method: "POST", Body: huge}, RuleBody)
	refusedBy(t, p, Request{Method: "GET", RawQuery: string(huge)}, RuleBody)
	refusedBy(t, p, Request{Method: "POST", Body: []byte(`{"query":"{a}"}`), Partial: true}, RuleBody)
	// Introspection refused when not allowed.
	no := false
	refusedBy(t, compile(t, Config{AllowIntrospection: &no}, ""), post(`{ __schema { types { name } } }`, ""), RuleIntrospection)
}

func TestNotGraphQL(t *testing.T) {
	p := compile(t, Config{}, "")
	for _, c := range []struct {
		name string
		r    Request
	}{
		{"empty", Request{Method: "POST"}},
		{"text", Request{Method: "POST", Body: []byte("hello")}},
		{"sql", Request{Method: "POST", ContentType: "application/graphql", Body: []byte("SELECT * FROM users")}},
		{"bad json", Request{Method: "POST", Body: []byte(`{"query": `)}},
		{"json without query", Request{Method: "POST", Body: []byte(`{"q": "{a}"}`)}},
		{"query not a string", Request{Method: "POST", Body: []byte(`{"query": 5}`)}},
		{"variables not an object", Request{Method: "POST", Body: []byte(`{"query": "{a}", "variables": [1]}`)}},
		{"extensions not an object", Request{Method: "POST", Body: []byte(`{"query": "{a}", "extensions": 3}`)}},
		{"unterminated", post(`{ me { id }`, "")},
		{"bad escape", Request{Method: "GET", RawQuery: "query=%zz"}},
		{"GET without query", Request{Method: "GET", RawQuery: "a=b"}},
		{"invalid utf-8", Request{Method: "POST", ContentType: "application/graphql", Body: []byte("{ \xff }")}},
	} {
		_, err := p.Price(c.r)
		var rf *Refusal
		if !errors.As(err, &rf) || (rf.Rule != RuleSyntax && rf.Rule != RuleOperation) {
			t.Errorf("%s: %v, want a syntax refusal", c.name, err)
		} else if rf.Detail == "" || !json.Valid(must(json.Marshal(rf.Detail))) {
			t.Errorf("%s: detail %q", c.name, rf.Detail)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestBadConfig(t *testing.T) {
	neg := int64(-1)
	for _, c := range []struct {
		name string
		cfg  Config
		sdl  string
		want []string
	}{
		{"negative limits", Config{MaxDepth: -1, MaxCost: -5, MaxBodyBytes: -1}, "", []string{"max_depth: must not be negative", "max_cost: must not be negative", "max_body_bytes: must not be negative"}},
		{"negative cost", Config{ObjectCost: &neg}, "", []string{"object_cost: must be between 0 and"}},
		{"bad key", Config{Costs: map[string]int64{"search": 1, "Query.se-arch": 2}}, "", []string{`costs: key "Query.se-arch": want Type.field or *.field`, `costs: key "search": want Type.field or *.field`}},
		{"negative entry", Config{ListSizes: map[string]int64{"Query.users": -2}}, "", []string{"list_sizes: Query.users: must be between 0 and"}},
		{"unknown field", Config{Costs: map[string]int64{"User.nmae": 1}}, schema, []string{`costs: User.nmae: type User has no field "nmae"`}},
		{"unknown type", Config{Costs: map[string]int64{"Usr.name": 1}}, schema, []string{`costs: Usr.name: the schema has no type "Usr"`}},
		{"unknown wildcard", Config{Costs: map[string]int64{"*.nmae": 1}}, schema, []string{`costs: *.nmae: no type of the schema has a field "nmae"`}},
		{"scalar type", Config{Costs: map[string]int64{"String.x": 1}}, schema, []string{"String is a scalar, not an object or interface type"}},
		{"bad schema", Config{}, "type Query { a: Missing }", []string{"schema: schema.graphql:1"}},
		{"tenant share above the whole", Config{PersistedQueries: PersistedQueries{CacheBytes: 1000, TenantCacheBytes: 2000}}, "", []string{"persisted_queries.tenant_cache_bytes: 2000 is above cache_bytes 1000"}},
		{"unknown_cost above max_cost", Config{MaxCost: 10, PersistedQueries: PersistedQueries{UnknownCost: ptr(int64(11))}}, "", []string{"persisted_queries.unknown_cost: 11 is above max_cost 10"}},
		{"bad list argument", Config{ListArguments: []string{"first", "1st"}}, "", []string{`list_arguments[1]: "1st" is not a GraphQL name`}},
	} {
		var sdl []byte
		if c.sdl != "" {
			sdl = []byte(c.sdl)
		}
		_, err := Compile(c.cfg, "schema.graphql", sdl)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v\nwant %q", c.name, err, w)
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestOneReading: a request that a server could read differently from halt is refused,
// never priced by one text and run by another: members matched exactly (encoding/json
// would take "QUERY" for query), written twice, or a POST's GraphQL parameters in its URL.
func TestOneReading(t *testing.T) {
	p := compile(t, Config{MaxBatch: 2}, "")
	expensive := `{ a(first: 1000) { b(first: 1000) { id } } }`
	for _, c := range []struct {
		name string
		r    Request
		rule string
	}{
		// Only the exact member is the query: the expensive one is priced (and refused).
		{"QUERY beside query", Request{Method: "POST", Body: []byte(`{"query":"` + expensive + `","QUERY":"{ a }"}`)}, RuleCost},
		{"query twice", Request{Method: "POST", Body: []byte(`{"query":"` + expensive + `","query":"{ a }"}`)}, RuleSyntax},
		{"operationName twice", Request{Method: "POST", Body: []byte(`{"query":"query A { a } query B { b }","operationName":"A","operationName":"B"}`)}, RuleSyntax},
		{"variable twice", post(`query($n: Int) { a(first: $n) { id } }`, `{"n": 1000, "n": 1}`), RuleSyntax},
		{"hash twice", Request{Method: "POST", Body: []byte(`{"extensions":{"persistedQuery":{"sha256Hash":"` + strings.Repeat("a", 64) + `","sha256Hash":"` + strings.Repeat("b", 64) + `"}}}`)}, RuleSyntax},
		{"batch member twice", Request{Method: "POST", Body: []byte(`[{"query":"{ a }"},{"query":"{ a }","query":"{ b }"}]`)}, RuleSyntax},
		{"data after the object", Request{Method: "POST", Body: []byte(`{"query":"{ a }"} {"query":"{ b }"}`)}, RuleSyntax},
		{"POST with a query in the URL", Request{Method: "POST", RawQuery: "query=" + url.QueryEscape(expensive), Body: []byte(`{"query":"{ a }"}`)}, RuleSyntax},
		{"POST with an operationName in the URL", Request{Method: "POST", RawQuery: "operationName=B", Body: []byte(`{"query":"query A { a } query B { b }","operationName":"A"}`)}, RuleSyntax},
		{"GET with two queries", Request{Method: "GET", RawQuery: "query=" + url.QueryEscape("{ a }") + "&query=" + url.QueryEscape(expensive)}, RuleSyntax},
		{"persistedQuery without a hash", Request{Method: "POST", Body: []byte(`{"query":"{ a }","extensions":{"persistedQuery":{"version":1}}}`)}, RulePersistedQuery},
		{"two fragments of one name", post(`{ ...F } fragment F on Query { a } fragment F on Query { b(first: 1000) { id } }`, ""), RuleFragment},
		{"two operations of one name", Request{Method: "POST", Body: []byte(`{"query":"query A { a } query A { b(first: 1000) { id } }","operationName":"A"}`)}, RuleOperation},
	} {
		res, err := p.Price(c.r)
		var rf *Refusal
		if !errors.As(err, &rf) || rf.Rule != c.rule {
			t.Errorf("%s: %+v %v, want refused by %s", c.name, res, err, c.rule)
		}
	}
	// A POST's URL may carry other parameters.
	if res := mustPrice(t, p, Request{Method: "POST", RawQuery: "tenant=acme", Body: []byte(`{"query":"{ a(first: 3) { id } }"}`)}); res.Cost != 3 {
		t.Errorf("POST with another URL parameter: %+v", res)
	}
}

// TestPersistedQueriesPerTenant: each tenant's texts are on its own share: a tenant
// filling its share evicts only its own; a text is read only by the tenant that
// registered it; the shelves are bounded in number (budget / share), the tenant idle
// the longest giving way, so the whole stays within its budget.
func TestPersistedQueriesPerTenant(t *testing.T) {
	c := newCache(300, 100)                                                                          // three tenants of 100 bytes
	text := func(i int) (string, string) { return fmt.Sprintf("%064d", i), strings.Repeat("x", 36) } // 100 bytes
	h, q := text(0)
	c.put("victim", h, q)
	for i := 1; i <= 50; i++ {
		c.put("attacker", fmt.Sprintf("%064d", i), strings.Repeat("y", 36))
	}
	if got, ok := c.get("victim", h); !ok || got != q {
		t.Fatal("the attacker's registrations evicted the victim's text")
	}
	if _, ok := c.get("attacker", h); ok {
		t.Fatal("a text was read by a tenant that never registered it")
	}
	if _, ok := c.get("attacker", fmt.Sprintf("%064d", 1)); ok {
		t.Fatal("the attacker's share holds more than its bound")
	}
	if _, ok := c.get("attacker", fmt.Sprintf("%064d", 50)); !ok {
		t.Fatal("the attacker's newest text is gone")
	}
	// A third tenant fits; a fourth takes the shelf of the one idle the longest.
	h3, q3 := text(60)
	c.put("third", h3, q3)
	c.get("victim", h)
	h4, q4 := text(61)
	c.put("fourth", h4, q4)
	if _, ok := c.get("victim", h); !ok {
		t.Fatal("the victim, used last, lost its shelf")
	}
	if _, ok := c.get("attacker", fmt.Sprintf("%064d", 50)); ok {
		t.Fatal("the tenant idle the longest kept its shelf beyond the bound")
	}
	if c.order.Len() != 3 || c.bytes() > 300 || c.len() != 3 {
		t.Fatalf("%d shelves, %d bytes, %d texts; want 3 within 300", c.order.Len(), c.bytes(), c.len())
	}
}
