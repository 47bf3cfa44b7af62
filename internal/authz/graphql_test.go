package authz_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/halt-envoy/halt-envoy/internal/authz"
)

const gqlLimits = `
domain: edge
default_plan: free
plans:
  free:
    rate_limit: {unit: minute, requests_per_unit: 100}
  pro:
    rate_limit: {unit: minute, requests_per_unit: 1000}
    quota: {period: daily, requests: 150}
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
`

const gqlAuthz = `
domain: edge
api_keys_file: keys.yaml
routes:
  - path: /graphql
    graphql:
      schema: schema.graphql
      max_depth: 4
      max_cost: 120
      costs: {Query.search: 10}
  - {method: GET, path: /v1/items, cost: 1}
`

const gqlSchema = `
type Query { me: User users(first: Int): [User!]! search(text: String!, limit: Int): [User!]! }
type User { id: ID! name: String! friends(first: Int): [User!]! }
`

func gqlReq(body string, h map[string]string) *authv3.CheckRequest {
	r := req("POST", "/graphql", public, h)
	r.Attributes.Request.Http.RawBody = []byte(body)
	return r
}

func gqlBody(query string, vars string) string {
	m := map[string]any{"query": query}
	if vars != "" {
		m["variables"] = json.RawMessage(vars)
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// TestGraphQLCostCharged: the operation's cost is charged as hits to the plan's limits
// and quotas, the answer tells upstream and Envoy the operation, cost and hash, and a
// client's own copies of those headers never pass.
func TestGraphQLCostCharged(t *testing.T) {
	e := setupFiles(t, gqlLimits, gqlAuthz, map[string]string{"schema.graphql": gqlSchema})
	pro := map[string]string{"x-api-key": proKey, "x-halt-graphql-operation": "Forged", "x-halt-graphql-hash": "forged"}

	// 5 users × (1 + 3 friends × 1) = 20.
	q := `query Friends($n: Int) { users(first: $n) { name friends(first: 3) { id } } }`
	r := e.check(t, gqlReq(gqlBody(q, `{"n": 5}`), pro))
	if status(r) != 200 {
		t.Fatalf("priced query: %v", r)
	}
	ok := r.GetOkResponse()
	up := headers(ok.GetHeaders())
	if up["x-halt-graphql-operation"] != "Friends" || up["x-halt-graphql-cost"] != "20" {
		t.Fatalf("upstream headers %v", up)
	}
	if !contains(ok.GetHeadersToRemove(), "x-halt-graphql-hash") {
		t.Fatalf("a forged hash header must be removed: %v", ok.GetHeadersToRemove())
	}
	// The daily quota of 150 is the tightest: 150 - 20 left.
	if down := headers(ok.GetResponseHeadersToAdd()); down["X-RateLimit-Remaining"] != "130" {
		t.Fatalf("remaining %v, want 130 (cost 20 charged)", down)
	}
	md := r.GetDynamicMetadata().AsMap()
	if md["graphql_operation"] != "Friends" || md["graphql_cost"] != "20" || md["graphql_operation_type"] != "query" || md["customer"] != "acme" {
		t.Fatalf("metadata %v", md)
	}

	// A persisted query, registered with its text, then sent by hash alone (GET).
	pq := `{ search(text: "x", limit: 5) { id } }` // 5 × 10 = 50
	sum := sha256.Sum256([]byte(pq))
	h := hex.EncodeToString(sum[:])
	ext := `{"persistedQuery":{"version":1,"sha256Hash":"` + h + `"}}`
	b, _ := json.Marshal(map[string]any{"query": pq, "extensions": json.RawMessage(ext)})
	r = e.check(t, gqlReq(string(b), map[string]string{"x-api-key": proKey}))
	if status(r) != 200 || headers(r.GetOkResponse().GetHeaders())["x-halt-graphql-hash"] != h {
		t.Fatalf("persisted query: %v", r)
	}
	get := req("GET", "/graphql?extensions="+strings.ReplaceAll(ext, `"`, "%22"), public, map[string]string{"x-api-key": proKey})
	r = e.check(t, get)
	if status(r) != 200 || headers(r.GetOkResponse().GetHeaders())["x-halt-graphql-cost"] != "50" {
		t.Fatalf("persisted query by hash: %v", r)
	}
	if down := headers(r.GetOkResponse().GetResponseHeadersToAdd()); down["X-RateLimit-Remaining"] != "30" {
		t.Fatalf("remaining %v, want 30 (20 + 50 + 50 charged)", down)
	}
	// The next query costs more than the quota has left: 429, not charged.
	r = e.check(t, gqlReq(gqlBody(`{ search(text: "y", limit: 4) { id } }`, ""), map[string]string{"x-api-key": proKey}))
	if status(r) != 429 || problemBody(t, r)["violated_policy"] != "quota:daily" {
		t.Fatalf("over the quota: %d %s", status(r), r.GetDeniedResponse().GetBody())
	}
	// Another route of the same config: the GraphQL headers are removed there too.
	r = e.check(t, req("GET", "/v1/items", public, map[string]string{"x-api-key": freeKey, "x-halt-graphql-cost": "1"}))
	if status(r) != 200 || !contains(r.GetOkResponse().GetHeadersToRemove(), "x-halt-graphql-cost") {
		t.Fatalf("non-GraphQL route: %v", r)
	}
	// Every priced request is observed, the one the quota refused too.
	var m dto.Metric
	if err := e.m.GraphQLCost.WithLabelValues("/graphql").(prometheus.Histogram).Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.GetHistogram().GetSampleCount() != 4 || m.GetHistogram().GetSampleSum() != 20+50+50+40 {
		t.Fatalf("halt_graphql_cost: %v", m.GetHistogram())
	}
}

func contains(l []string, s string) bool {
	for _, v := range l {
		if v == s {
			return true
		}
	}
	return false
}

// TestGraphQLRefusals: each broken rule answers 400 with a problem+json body naming it,
// InvalidArgument, and nothing is charged.
func TestGraphQLRefusals(t *testing.T) {
	// A gRPC server that takes 16 MB messages, so that halt's own cap is what refuses
	// the 10 MB body.
	e := setupFiles(t, gqlLimits, gqlAuthz, map[string]string{"schema.graphql": gqlSchema}, grpc.MaxRecvMsgSize(16<<20))
	key := map[string]string{"x-api-key": freeKey}
	for _, c := range []struct {
		name, body, rule string
		partial          bool
	}{
		{"depth", gqlBody(`{ me { friends { friends { friends { id } } } } }`, ""), "max_depth", false},
		{"cost", gqlBody(`{ users(first: 50) { friends(first: 50) { id } } }`, ""), "max_cost", false},
		{"aliases", gqlBody("{"+strings.Repeat("a: me { id } ", 51)+"}", ""), "max_aliases", false},
		{"not GraphQL", "SELECT * FROM users", "syntax", false},
		{"not JSON GraphQL", `{"query": "{ me { id }"}`, "syntax", false},
		{"fragment cycle", gqlBody(`{ ...A } fragment A on Query { ...A }`, ""), "fragment", false},
		{"10 MB", `{"query":"` + strings.Repeat("a", 10<<20) + `"}`, "max_body_bytes", false},
		{"partial", gqlBody(`{ me { id } }`, ""), "max_body_bytes", true},
	} {
		h := map[string]string{"x-api-key": freeKey}
		if c.partial {
			h["x-envoy-auth-partial-body"] = "true"
		}
		r := e.check(t, gqlReq(c.body, h))
		body := problemBody(t, r)
		if status(r) != 400 || r.GetStatus().GetCode() != int32(codes.InvalidArgument) || body["violated_policy"] != "graphql:"+c.rule || body["detail"] == "" {
			t.Errorf("%s: %d %v, want 400 graphql:%s", c.name, status(r), body, c.rule)
		}
		if headers(r.GetDeniedResponse().GetHeaders())["Content-Type"] != "application/problem+json" {
			t.Errorf("%s: content type", c.name)
		}
		if got := testutil.ToFloat64(e.m.GraphQLRefusals.WithLabelValues("/graphql", c.rule)); got < 1 {
			t.Errorf("%s: halt_graphql_refusals_total{rule=%s} = %v", c.name, c.rule, got)
		}
	}
	// Nothing was charged: the free plan's 100 a minute are whole.
	r := e.check(t, gqlReq(gqlBody(`{ me { id } }`, ""), key))
	if down := headers(r.GetOkResponse().GetResponseHeadersToAdd()); status(r) != 200 || down["X-RateLimit-Remaining"] != "99" {
		t.Fatalf("after the refusals: %d %v, want 99 remaining", status(r), down)
	}
	// Identity first: an unknown key is 401 before its body is read.
	if r := e.check(t, gqlReq("garbage", map[string]string{"x-api-key": "nope"})); status(r) != 401 {
		t.Fatalf("unknown key with a bad body: %d", status(r))
	}
}

func TestGraphQLConfigProblems(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "schema.graphql"), []byte(gqlSchema), 0o644)
	for _, c := range []struct{ name, yaml, want string }{
		{"unknown key", "domain: d\nroutes:\n  - path: /graphql\n    graphql: {max_dept: 3}\n", "field max_dept not found"},
		{"unknown field in a cost table", "domain: d\nroutes:\n  - path: /graphql\n    graphql: {schema: schema.graphql, costs: {Query.serch: 3}}\n", `authz.yaml:4:47: routes[0].graphql.costs: Query.serch: type Query has no field "serch"`},
		{"cost and graphql", "domain: d\nroutes:\n  - path: /graphql\n    cost: 2\n    graphql: {}\n", "routes[0].cost: a graphql route is charged its operation's cost"},
		{"negative bound", "domain: d\nroutes:\n  - path: /graphql\n    graphql: {max_cost: -1}\n", "authz.yaml:4:15: routes[0].graphql.max_cost: must not be negative"},
		{"at its line", "domain: d\nroutes:\n  - path: /graphql\n    graphql:\n      schema: schema.graphql\n      costs:\n        Query.users: 2\n        User.nmae: 1\n", `authz.yaml:8:9: routes[0].graphql.costs: User.nmae: type User has no field "nmae"`},
		{"list argument at its line", "domain: d\nroutes:\n  - path: /a\n  - path: /graphql\n    graphql:\n      list_arguments:\n        - first\n        - 1st\n", `authz.yaml:8:11: routes[1].graphql.list_arguments[1]: "1st" is not a GraphQL name`},
		{"unknown nested key", "domain: d\nroutes:\n  - path: /graphql\n    graphql:\n      persisted_queries: {cache_byte: 3}\n", "line 5: field cache_byte not found in graphql.persisted_queries (valid: cache_bytes, tenant_cache_bytes, unknown_cost)"},
		{"missing schema", "domain: d\nroutes:\n  - path: /graphql\n    graphql: {schema: nope.graphql}\n", "authz.yaml:4:15: routes[0].graphql.schema:"},
		{"bad schema", "domain: d\nroutes:\n  - path: /graphql\n    graphql: {schema: authz.yaml}\n", "routes[0].graphql.schema:"},
	} {
		p := filepath.Join(dir, "authz.yaml")
		os.WriteFile(p, []byte(c.yaml), 0o644)
		_, err := authz.LoadConfig(p)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

// TestGraphQLPersistedQueriesPerTenant: one tenant's registrations cannot evict
// another's persisted queries. The attack: the victim registers a query (priced 10),
// then another customer registers 80 padded queries. Before, the cache was shared and
// the victim's hash-only request was then charged unknown_cost (max_cost, 120); now each
// customer has its own share, so the attacker evicts only its own texts, and a text is
// never read across customers.
func TestGraphQLPersistedQueriesPerTenant(t *testing.T) {
	authzYAML := strings.Replace(gqlAuthz, "      max_cost: 120\n", "      max_cost: 120\n      persisted_queries: {cache_bytes: 16384, tenant_cache_bytes: 4096}\n", 1)
	roomy := strings.Replace(strings.Replace(gqlLimits, "requests_per_unit: 100}", "requests_per_unit: 100000}", 1), "    quota: {period: daily, requests: 150}\n", "", 1)
	e := setupFiles(t, roomy, authzYAML, map[string]string{"schema.graphql": gqlSchema})
	victim := map[string]string{"x-api-key": freeKey}
	attacker := map[string]string{"x-api-key": proKey}
	cost := func(r *authv3.CheckResponse) string {
		t.Helper()
		if status(r) != 200 {
			t.Fatalf("%d %s", status(r), r.GetDeniedResponse().GetBody())
		}
		return headers(r.GetOkResponse().GetHeaders())["x-halt-graphql-cost"]
	}
	register := func(h map[string]string, q string) (string, string) {
		sum := sha256.Sum256([]byte(q))
		hash := hex.EncodeToString(sum[:])
		b, _ := json.Marshal(map[string]any{"query": q, "extensions": map[string]any{"persistedQuery": map[string]any{"version": 1, "sha256Hash": hash}}})
		return hash, cost(e.check(t, gqlReq(string(b), h)))
	}
	hashOnly := func(h map[string]string, hash string) string {
		return cost(e.check(t, gqlReq(`{"extensions":{"persistedQuery":{"version":1,"sha256Hash":"`+hash+`"}}}`, h)))
	}
	q := `query Find { search(text: "ada", limit: 1) { id } }`
	hash, registered := register(victim, q)
	if registered != "10" || hashOnly(victim, hash) != "10" {
		t.Fatalf("the victim's query: registered at %s, then by hash at %s; want 10", registered, hashOnly(victim, hash))
	}
	// Another customer never reads the victim's text: unknown to it, max_cost.
	if got := hashOnly(attacker, hash); got != "120" {
		t.Fatalf("the victim's hash from another customer: %s, want 120 (unknown_cost)", got)
	}
	var first string
	for i := 0; i < 80; i++ { // about 1 KB each: 20 times the attacker's share
		h, _ := register(attacker, fmt.Sprintf("query P%d { me { id } } # %s", i, strings.Repeat("x", 1000)))
		if i == 0 {
			first = h
		}
	}
	if got := hashOnly(victim, hash); got != "10" {
		t.Fatalf("the victim's query after 80 padded registrations by another customer: %s, want 10", got)
	}
	// The attacker's share is bounded: its own first text is gone.
	if got := hashOnly(attacker, first); got != "120" {
		t.Fatalf("the attacker's first text after 80 registrations: %s, want 120 (evicted from its own share)", got)
	}
}

// TestGraphQLPersistedQueriesAnonymousShareOneShelf: callers identified only by their
// source address share one shelf of the persisted-query cache. The attack: a customer
// registers a query (priced 10), then callers from 40 fresh addresses (a /48 holds
// 65,536 /64s) register one text each. Before, each address took a shelf of its own, the
// customer's (idle the longest) was given to one of them, and its hash-only requests
// were charged unknown_cost (max_cost, 120) from then on.
func TestGraphQLPersistedQueriesAnonymousShareOneShelf(t *testing.T) {
	authzYAML := strings.Replace(gqlAuthz, "      max_cost: 120\n", "      max_cost: 120\n      persisted_queries: {cache_bytes: 16384, tenant_cache_bytes: 4096}\n", 1) +
		"identity:\n  - api_key: {}\n  - source_address: true\nanonymous: {plan: free}\n"
	roomy := strings.Replace(strings.Replace(gqlLimits, "requests_per_unit: 100}", "requests_per_unit: 100000}", 1), "    quota: {period: daily, requests: 150}\n", "", 1)
	e := setupFiles(t, roomy, authzYAML, map[string]string{"schema.graphql": gqlSchema})
	send := func(source string, h map[string]string, body string) string {
		t.Helper()
		r := req("POST", "/graphql", source, h)
		r.Attributes.Request.Http.RawBody = []byte(body)
		resp := e.check(t, r)
		if status(resp) != 200 {
			t.Fatalf("%s: %d %s", source, status(resp), resp.GetDeniedResponse().GetBody())
		}
		return headers(resp.GetOkResponse().GetHeaders())["x-halt-graphql-cost"]
	}
	register := func(source string, h map[string]string, q string) (string, string) {
		sum := sha256.Sum256([]byte(q))
		hash := hex.EncodeToString(sum[:])
		b, _ := json.Marshal(map[string]any{"query": q, "extensions": map[string]any{"persistedQuery": map[string]any{"version": 1, "sha256Hash": hash}}})
		return hash, send(source, h, string(b))
	}
	hashOnly := func(source string, h map[string]string, hash string) string {
		return send(source, h, `{"extensions":{"persistedQuery":{"version":1,"sha256Hash":"`+hash+`"}}}`)
	}
	customer := map[string]string{"x-api-key": freeKey}
	hash, registered := register(public, customer, `query Find { search(text: "ada", limit: 1) { id } }`)
	if registered != "10" {
		t.Fatalf("the customer's query registered at %s, want 10", registered)
	}
	var anon []string
	for i := 0; i < 40; i++ {
		src := fmt.Sprintf("2001:db8:7:%x::1", i)
		h, _ := register(src, nil, fmt.Sprintf("query A%d { me { id } }", i))
		anon = append(anon, h)
	}
	if got := hashOnly(public, customer, hash); got != "10" {
		t.Fatalf("the customer's query after 40 anonymous addresses registered: %s, want 10", got)
	}
	// The anonymous callers' shelf is one, bounded by tenant_cache_bytes, and theirs:
	// the last text registered is there for any anonymous caller, a keyed customer
	// does not read it.
	if got := hashOnly("2001:db8:8::1", nil, anon[39]); got != "1" {
		t.Fatalf("the last anonymous text from another anonymous caller: %s, want 1", got)
	}
	if got := hashOnly(public, customer, anon[39]); got != "120" {
		t.Fatalf("an anonymous text from a keyed customer: %s, want 120 (unknown_cost)", got)
	}
}
