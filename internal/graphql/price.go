package graphql

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"
	"github.com/vektah/gqlparser/v2/lexer"
	"github.com/vektah/gqlparser/v2/parser"
)

// Request is what the pricer reads of an HTTP request.
type Request struct {
	// Method is the HTTP method: GET reads the URL's query string, anything else the body.
	Method string
	// ContentType is the request's Content-Type: application/graphql means the body is
	// the document itself; anything else is read as JSON.
	ContentType string
	// RawQuery is the URL's query string, without "?" (GET).
	RawQuery string
	// Body is the request body as Envoy sent it.
	Body []byte
	// Partial says Envoy sent only the body's first max_request_bytes
	// (x-envoy-auth-partial-body: true): a truncated document cannot be priced.
	Partial bool
	// Tenant is the identity the route keys by (ext_authz's customer): the persisted
	// queries it registers are remembered on its own share of the cache, and its
	// hash-only requests read only them.
	Tenant string
}

// Operation is one priced operation of a request.
type Operation struct {
	// Name is the operation's name, "" for an anonymous one (or a persisted query whose
	// text is unknown and whose operationName is not a GraphQL name).
	Name string
	// Type is query, mutation or subscription; "" for an unknown persisted query.
	Type string
	// Hash is the persisted query's SHA-256 (hex), "" when none was sent.
	Hash string
	// Cost is the operation's cost; Depth and Aliases what the limits judged.
	Cost           int64
	Depth, Aliases int
	// Source says where the text came from: "request", "cache" (a persisted query seen
	// before) or "unknown" (a persisted query never seen: charged unknown_cost).
	Source string
}

// Result is a priced request.
type Result struct {
	// Cost is what the request is charged: the operations' costs summed, at least 1.
	Cost int64
	// Operations are the request's operations, in order (one unless batched).
	Operations []Operation
}

// The rules a Refusal names.
const (
	RuleBody           = "max_body_bytes"
	RuleTokens         = "max_tokens"
	RuleDepth          = "max_depth"
	RuleAliases        = "max_aliases"
	RuleCost           = "max_cost"
	RuleBatch          = "max_batch"
	RuleSyntax         = "syntax"
	RuleOperation      = "operation"
	RuleFragment       = "fragment"
	RuleIntrospection  = "introspection"
	RulePersistedQuery = "persisted_query"
)

// Refusal is a request the pricer will not price: Rule names the rule it broke (one
// of the Rule constants), Detail says how, with the numbers.
type Refusal struct {
	Rule, Detail string
}

func (r *Refusal) Error() string { return "graphql " + r.Rule + ": " + r.Detail }

func refuse(rule, format string, args ...any) *Refusal {
	return &Refusal{Rule: rule, Detail: fmt.Sprintf(format, args...)}
}

// ceiling saturates costs and counts: beyond it every limit has long refused.
const ceiling = int64(1) << 53

func satAdd(a, b int64) int64 { return min(a+b, ceiling) } // a, b <= ceiling: no overflow

func satMul(a, b int64) int64 {
	if a == 0 || b == 0 {
		return 0
	}
	if a > ceiling/b {
		return ceiling
	}
	return min(a*b, ceiling)
}

// wireRequest is one GraphQL-over-HTTP request (a JSON body, or a GET's parameters).
type wireRequest struct {
	Query         *string
	OperationName *string
	Variables     json.RawMessage
	Extensions    json.RawMessage
}

// The members of a GraphQL-over-HTTP request. They are matched exactly: encoding/json
// would also take "QUERY" for query, and a request carrying both would be priced by
// one text and run (by a JavaScript or Python server, which match exactly) by another.
const (
	memberQuery      = "query"
	memberOperation  = "operationName"
	memberVariables  = "variables"
	memberExtensions = "extensions"
)

// object reads a JSON object's members, matched exactly. A member written twice is
// refused: parsers differ on which copy wins, and halt must price the one the server
// runs. what names the object in a refusal.
func object(raw []byte, what string) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, refuse(RuleSyntax, "%s is not a JSON object", what)
	}
	m := map[string]json.RawMessage{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, refuse(RuleSyntax, "%s: %s", what, clip(err.Error()))
		}
		k, _ := t.(string)
		if _, dup := m[k]; dup {
			return nil, refuse(RuleSyntax, "%s has two members %q: which one a server reads differs", what, clip(k))
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, refuse(RuleSyntax, "%s: %s", what, clip(err.Error()))
		}
		m[k] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, refuse(RuleSyntax, "%s: %s", what, clip(err.Error()))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, refuse(RuleSyntax, "%s: data after the object", what)
	}
	return m, nil
}

// decodeWire reads one request object of a JSON body.
func decodeWire(raw []byte, what string) (wireRequest, error) {
	var w wireRequest
	m, err := object(raw, what)
	if err != nil {
		return w, err
	}
	str := func(member string) (*string, error) {
		v := jsonValue(m[member])
		if v == nil {
			return nil, nil
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return nil, refuse(RuleSyntax, "%s: %s is not a string", what, member)
		}
		return &s, nil
	}
	if w.Query, err = str(memberQuery); err != nil {
		return w, err
	}
	if w.OperationName, err = str(memberOperation); err != nil {
		return w, err
	}
	w.Variables, w.Extensions = m[memberVariables], m[memberExtensions]
	return w, nil
}

// persistedHash reads extensions.persistedQuery.sha256Hash, in lower case ("" when
// there is no persistedQuery); a persistedQuery without a valid hash is refused.
func persistedHash(raw json.RawMessage) (string, error) {
	raw = jsonValue(raw)
	if raw == nil {
		return "", nil
	}
	ext, err := object(raw, "extensions")
	if err != nil {
		return "", err
	}
	pqRaw := jsonValue(ext["persistedQuery"])
	if pqRaw == nil {
		return "", nil
	}
	pq, err := object(pqRaw, "extensions.persistedQuery")
	if err != nil {
		return "", err
	}
	var h string
	if err := json.Unmarshal(jsonValue(pq["sha256Hash"]), &h); err != nil || len(h) != 64 || !isHex(strings.ToLower(h)) {
		return "", refuse(RulePersistedQuery, "extensions.persistedQuery.sha256Hash must be 64 hex digits")
	}
	return strings.ToLower(h), nil
}

// Price prices r, or refuses it with a *Refusal. It never panics on any input; its
// work is bounded by max_body_bytes (before parsing), max_tokens (while parsing) and
// one walk of the parsed document.
func (p *Pricer) Price(r Request) (Result, error) {
	if r.Partial {
		return Result{}, refuse(RuleBody, "the body was cut at Envoy's max_request_bytes; max_body_bytes is %d", p.maxBody)
	}
	reqs, err := p.decode(r)
	if err != nil {
		return Result{}, err
	}
	if len(reqs) > p.maxBatch {
		return Result{}, refuse(RuleBatch, "%d operations in one request; max_batch is %d", len(reqs), p.maxBatch)
	}
	var res Result
	var learn []entry // persisted texts to remember once the request passes
	for i := range reqs {
		op, text, err := p.operation(r.Tenant, &reqs[i])
		if err != nil {
			if len(reqs) > 1 {
				var rf *Refusal
				if errors.As(err, &rf) {
					rf.Detail = fmt.Sprintf("operation %d of the batch: %s", i, rf.Detail)
				}
			}
			return Result{}, err
		}
		if op.Hash != "" && op.Source == "request" {
			learn = append(learn, entry{hash: op.Hash, query: text})
		}
		res.Cost = satAdd(res.Cost, op.Cost)
		res.Operations = append(res.Operations, op)
	}
	if res.Cost > p.maxCost {
		return Result{}, refuse(RuleCost, "the request costs %d; max_cost is %d", res.Cost, p.maxCost)
	}
	res.Cost = max(res.Cost, 1)
	for _, e := range learn {
		p.apq.put(r.Tenant, e.hash, e.query)
	}
	return res, nil
}

// decode reads the request's operations: a GET's parameters, an application/graphql
// body, or a JSON body (one object, or an array for a batch).
func (p *Pricer) decode(r Request) ([]wireRequest, error) {
	if strings.EqualFold(r.Method, "GET") {
		if int64(len(r.RawQuery)) > p.maxBody {
			return nil, refuse(RuleBody, "the query string is %d bytes; max_body_bytes is %d", len(r.RawQuery), p.maxBody)
		}
		v, err := url.ParseQuery(r.RawQuery)
		if err != nil {
			return nil, refuse(RuleSyntax, "the query string is not URL-encoded: %s", clip(err.Error()))
		}
		var w wireRequest
		for _, m := range []string{memberQuery, memberOperation, memberVariables, memberExtensions} {
			if len(v[m]) > 1 {
				return nil, refuse(RuleSyntax, "the query string has %d parameters %q: which one a server reads differs", len(v[m]), m)
			}
		}
		if q, ok := v[memberQuery]; ok {
			w.Query = &q[0]
		}
		if n, ok := v[memberOperation]; ok {
			w.OperationName = &n[0]
		}
		// Variables and extensions are JSON text in a GET (GraphQL over HTTP).
		if s := v.Get(memberVariables); s != "" {
			w.Variables = json.RawMessage(s)
		}
		if s := v.Get(memberExtensions); s != "" {
			w.Extensions = json.RawMessage(s)
		}
		return []wireRequest{w}, nil
	}
	if int64(len(r.Body)) > p.maxBody {
		return nil, refuse(RuleBody, "the body is %d bytes; max_body_bytes is %d", len(r.Body), p.maxBody)
	}
	// A POST's parameters are its body's. Some servers (express-graphql) read a query
	// in the URL first: one there would run while halt priced the body's.
	if r.RawQuery != "" {
		if int64(len(r.RawQuery)) > p.maxBody {
			return nil, refuse(RuleBody, "the query string is %d bytes; max_body_bytes is %d", len(r.RawQuery), p.maxBody)
		}
		v, err := url.ParseQuery(r.RawQuery)
		if err != nil {
			return nil, refuse(RuleSyntax, "the query string is not URL-encoded: %s", clip(err.Error()))
		}
		for _, m := range []string{memberQuery, memberOperation, memberVariables, memberExtensions} {
			if _, ok := v[m]; ok {
				return nil, refuse(RuleSyntax, "a %s request carries %q in its URL: send the GraphQL parameters in the body (or use GET)", clip(r.Method), m)
			}
		}
	}
	ct := strings.ToLower(strings.TrimSpace(strings.SplitN(r.ContentType, ";", 2)[0]))
	if ct == "application/graphql" {
		q := string(r.Body)
		return []wireRequest{{Query: &q}}, nil
	}
	body := bytes.TrimLeft(r.Body, " \t\r\n")
	switch {
	case len(body) > 0 && body[0] == '{':
		w, err := decodeWire(body, "the body")
		if err != nil {
			return nil, err
		}
		return []wireRequest{w}, nil
	case len(body) > 0 && body[0] == '[':
		// Decode the elements raw first: a batch longer than max_batch is refused by its
		// length, not after decoding every element.
		var raw []json.RawMessage
		if err := json.Unmarshal(body, &raw); err != nil {
			return nil, refuse(RuleSyntax, "the body is not a GraphQL batch (a JSON array of requests): %s", clip(err.Error()))
		}
		if len(raw) == 0 {
			return nil, refuse(RuleSyntax, "an empty batch")
		}
		if len(raw) > p.maxBatch {
			return nil, refuse(RuleBatch, "%d operations in one request; max_batch is %d", len(raw), p.maxBatch)
		}
		out := make([]wireRequest, len(raw))
		for i, m := range raw {
			w, err := decodeWire(m, fmt.Sprintf("operation %d of the batch", i))
			if err != nil {
				return nil, err
			}
			out[i] = w
		}
		return out, nil
	}
	return nil, refuse(RuleSyntax, "the body is not a GraphQL request: want JSON with a query (or Content-Type: application/graphql)")
}

// operation prices one request of the body. It returns the text priced (for the
// persisted-query cache).
func (p *Pricer) operation(tenant string, w *wireRequest) (Operation, string, error) {
	var op Operation
	h, err := persistedHash(w.Extensions)
	if err != nil {
		return op, "", err
	}
	op.Hash = h
	name := ""
	if w.OperationName != nil {
		name = *w.OperationName
	}
	query := ""
	if w.Query != nil {
		query = *w.Query
	}
	op.Source = "request"
	switch {
	case query == "" && op.Hash == "":
		return op, "", refuse(RuleSyntax, "no query")
	case query == "":
		text, ok := p.apq.get(tenant, op.Hash)
		if !ok {
			op.Source, op.Cost = "unknown", p.unknownCost
			if nameRE.MatchString(name) {
				op.Name = name
			}
			return op, "", nil
		}
		query, op.Source = text, "cache"
	case op.Hash != "":
		if sum := sha256.Sum256([]byte(query)); hex.EncodeToString(sum[:]) != op.Hash {
			return op, "", refuse(RulePersistedQuery, "extensions.persistedQuery.sha256Hash is not the SHA-256 of the query")
		}
	}
	vars, err := variables(w.Variables)
	if err != nil {
		return op, "", err
	}
	doc, err := p.parse(query)
	if err != nil {
		return op, "", err
	}
	def, err := pick(doc, name, w.OperationName != nil && name != "")
	if err != nil {
		return op, "", err
	}
	op.Name, op.Type = def.Name, string(def.Operation)
	wk := walker{p: p, vars: vars, varDefs: def.VariableDefinitions, frags: make(map[string]*fragment, len(doc.Fragments))}
	// Names are unique in a valid document (the server refuses one where they are not);
	// halt refuses it too rather than price one definition while the server might run
	// another.
	for _, f := range doc.Fragments {
		if _, dup := wk.frags[f.Name]; dup {
			return op, "", refuse(RuleFragment, "two fragments named %q", clip(f.Name))
		}
		wk.frags[f.Name] = &fragment{def: f}
	}
	root := ""
	switch def.Operation {
	case ast.Query:
		root = p.roots[0]
	case ast.Mutation:
		root = p.roots[1]
	case ast.Subscription:
		root = p.roots[2]
	}
	s, err := wk.walk(def.SelectionSet, root, 1)
	if err != nil {
		return op, "", err
	}
	op.Cost, op.Depth, op.Aliases = s.cost, s.depth, int(s.aliases)
	return op, query, nil
}

// parse parses a document under max_tokens; a refused document is told apart as too
// long (max_tokens), too deeply nested for the parser (max_depth) or not GraphQL.
func (p *Pricer) parse(query string) (*ast.QueryDocument, error) {
	doc, err := parser.ParseQueryWithTokenLimit(&ast.Source{Name: "query", Input: query}, p.maxTokens)
	if err == nil {
		return doc, nil
	}
	// Lex again (bounded by max_tokens + 1) to say which limit the document broke.
	lx := lexer.New(&ast.Source{Input: query})
	depth, deepest := 0, 0
	for n := 0; ; n++ {
		if n > p.maxTokens {
			return nil, refuse(RuleTokens, "the document has more than max_tokens %d tokens", p.maxTokens)
		}
		tok, lerr := lx.ReadToken()
		if lerr != nil || tok.Kind == lexer.EOF {
			break
		}
		switch tok.Kind {
		case lexer.BraceL, lexer.BracketL:
			depth++
			deepest = max(deepest, depth)
		case lexer.BraceR, lexer.BracketR:
			depth--
		}
	}
	if deepest >= parser.MaxNestingDepth {
		return nil, refuse(RuleDepth, "the document nests %d levels or more; max_depth is %d", parser.MaxNestingDepth, p.maxDepth)
	}
	msg := err.Error()
	var ge *gqlerror.Error
	if errors.As(err, &ge) {
		msg = ge.Message
		if len(ge.Locations) > 0 {
			msg = fmt.Sprintf("%d:%d: %s", ge.Locations[0].Line, ge.Locations[0].Column, ge.Message)
		}
	}
	return nil, refuse(RuleSyntax, "not a GraphQL document: %s", clip(msg))
}

// pick selects the operation to run, as a GraphQL server does: the one named, else
// the only one.
func pick(doc *ast.QueryDocument, name string, named bool) (*ast.OperationDefinition, error) {
	seen := make(map[string]bool, len(doc.Operations))
	for _, o := range doc.Operations {
		if seen[o.Name] && o.Name != "" {
			return nil, refuse(RuleOperation, "two operations named %q", clip(o.Name))
		}
		seen[o.Name] = true
	}
	if named {
		for _, o := range doc.Operations {
			if o.Name == name {
				return o, nil
			}
		}
		return nil, refuse(RuleOperation, "the document has no operation named %q", clip(name))
	}
	switch len(doc.Operations) {
	case 0:
		return nil, refuse(RuleOperation, "the document has no operation")
	case 1:
		return doc.Operations[0], nil
	}
	return nil, refuse(RuleOperation, "the document has %d operations and the request names none (operationName)", len(doc.Operations))
}

// variables reads the variables object (or a JSON string holding one, as GET sends
// it); values stay raw until a list argument needs one.
func variables(raw json.RawMessage) (map[string]json.RawMessage, error) {
	raw = jsonValue(raw)
	if raw == nil {
		return nil, nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, refuse(RuleSyntax, "variables: %s", clip(err.Error()))
		}
		if raw = jsonValue(json.RawMessage(s)); raw == nil {
			return nil, nil
		}
	}
	return object(raw, "variables")
}

// jsonValue is raw without surrounding space, nil for nothing or null.
func jsonValue(raw json.RawMessage) json.RawMessage {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	return raw
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// clip keeps what a refusal quotes from the request short and valid UTF-8.
func clip(s string) string {
	const n = 120
	if len(s) > n {
		s = s[:n]
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// summary is what a selection set adds up to.
type summary struct {
	cost    int64
	depth   int // the deepest field, absolute (relative to the fragment for a fragment's own)
	aliases int64
}

type fragment struct {
	def   *ast.FragmentDefinition
	state uint8 // 0 not priced, 1 being priced (a spread now is a cycle), 2 priced
	sum   summary
}

// walker prices one operation.
type walker struct {
	p       *Pricer
	vars    map[string]json.RawMessage
	varDefs ast.VariableDefinitionList
	frags   map[string]*fragment
}

func (w *walker) merge(s *summary, o summary) error {
	s.cost = satAdd(s.cost, o.cost)
	s.depth = max(s.depth, o.depth)
	s.aliases = satAdd(s.aliases, o.aliases)
	if s.depth > w.p.maxDepth {
		return refuse(RuleDepth, "fields nest %d deep; max_depth is %d", s.depth, w.p.maxDepth)
	}
	if s.aliases > int64(w.p.maxAliases) {
		return refuse(RuleAliases, "more than max_aliases %d aliased fields", w.p.maxAliases)
	}
	return nil
}

// walk prices a selection set whose fields are at depth, on type parent ("" unknown).
func (w *walker) walk(ss ast.SelectionSet, parent string, depth int) (summary, error) {
	var s summary
	for _, sel := range ss {
		var o summary
		var err error
		switch x := sel.(type) {
		case *ast.Field:
			if depth > w.p.maxDepth {
				return s, refuse(RuleDepth, "fields nest deeper than max_depth %d", w.p.maxDepth)
			}
			o, err = w.field(x, parent, depth)
		case *ast.InlineFragment:
			t := parent
			if x.TypeCondition != "" {
				t = x.TypeCondition
			}
			o, err = w.walk(x.SelectionSet, t, depth)
		case *ast.FragmentSpread:
			var f summary
			f, err = w.fragment(x.Name)
			o = f
			if f.depth > 0 {
				o.depth = depth - 1 + f.depth
			}
		}
		if err != nil {
			return s, err
		}
		if err := w.merge(&s, o); err != nil {
			return s, err
		}
	}
	return s, nil
}

// fragment prices a named fragment once, at relative depth 1; every later spread reuses
// the price. A spread met while its fragment is being priced is a cycle.
func (w *walker) fragment(name string) (summary, error) {
	f := w.frags[name]
	switch {
	case f == nil:
		return summary{}, refuse(RuleFragment, "no fragment named %q", clip(name))
	case f.state == 1:
		return summary{}, refuse(RuleFragment, "fragment %q spreads itself", name)
	case f.state == 2:
		return f.sum, nil
	}
	f.state = 1
	s, err := w.walk(f.def.SelectionSet, f.def.TypeCondition, 1)
	if err != nil {
		return s, err
	}
	f.sum, f.state = s, 2
	return s, nil
}

// field prices one field at depth on type parent: its list size times its own cost
// plus its selection's.
func (w *walker) field(x *ast.Field, parent string, depth int) (summary, error) {
	var s summary
	if x.Alias != "" && x.Alias != x.Name {
		s.aliases = 1
	}
	switch x.Name {
	case "__typename":
		s.depth = depth
		return s, nil
	case "__schema", "__type":
		if !w.p.allowIntrospection {
			return s, refuse(RuleIntrospection, "introspection (%s) is not allowed", x.Name)
		}
		// A flat price: the subtree counts for depth and aliases, not for cost.
		sub, err := w.walk(x.SelectionSet, "", depth+1)
		if err != nil {
			return s, err
		}
		return summary{cost: w.p.introspectionCost, depth: max(depth, sub.depth), aliases: satAdd(s.aliases, sub.aliases)}, nil
	}
	var fd *ast.FieldDefinition
	child := ""
	if w.p.schema != nil && parent != "" {
		if d := w.p.schema.Types[parent]; d != nil {
			fd = d.Fields.ForName(x.Name)
		}
		if fd != nil {
			child = fd.Type.Name()
		}
	}
	own := w.p.scalarCost
	if len(x.SelectionSet) > 0 {
		own = w.p.objectCost
	}
	if v, ok := lookup(w.p.costs, parent, x.Name); ok {
		own = v
	}
	size := w.size(x, parent, fd)
	sub := summary{}
	if len(x.SelectionSet) > 0 {
		var err error
		if sub, err = w.walk(x.SelectionSet, child, depth+1); err != nil {
			return s, err
		}
	}
	s.cost = satMul(size, satAdd(own, sub.cost))
	s.depth = max(depth, sub.depth)
	s.aliases = satAdd(s.aliases, sub.aliases)
	return s, nil
}

// lookup finds a table's entry for field name on type parent: "Type.field", then
// "*.field".
func lookup(t map[string]int64, parent, name string) (int64, bool) {
	if len(t) == 0 {
		return 0, false
	}
	if parent != "" {
		if v, ok := t[parent+"."+name]; ok {
			return v, true
		}
	}
	v, ok := t["*."+name]
	return v, ok
}

// size is how many items a field returns: the largest of its list arguments (a value
// that cannot be read as a non-negative integer counts as default_list_size); without
// any, its list_sizes entry; else default_list_size for a list field of the schema;
// else 1.
func (w *walker) size(x *ast.Field, parent string, fd *ast.FieldDefinition) int64 {
	found, n := false, int64(0)
	for _, a := range w.p.listArgs {
		arg := x.Arguments.ForName(a)
		if arg == nil {
			continue
		}
		v, ok := w.intValue(arg.Value)
		if !ok {
			v = w.p.listSize
		}
		found, n = true, max(n, v)
	}
	if found {
		return n
	}
	if v, ok := lookup(w.p.listSizes, parent, x.Name); ok {
		return v
	}
	if fd != nil && fd.Type.Elem != nil {
		return w.p.listSize
	}
	return 1
}

// intValue reads a list argument's value: an integer literal, or a variable from the
// request's variables, else the variable's default. Too large a number saturates.
func (w *walker) intValue(v *ast.Value) (int64, bool) {
	if v == nil {
		return 0, false
	}
	switch v.Kind {
	case ast.IntValue:
		return parseCount(v.Raw)
	case ast.Variable:
		if raw := jsonValue(w.vars[v.Raw]); raw != nil {
			return parseCount(string(raw))
		}
		if def := w.varDefs.ForName(v.Raw); def != nil && def.DefaultValue != nil && def.DefaultValue.Kind == ast.IntValue {
			return parseCount(def.DefaultValue.Raw)
		}
	}
	return 0, false
}

// parseCount reads a non-negative integer (a JSON number with an integral value too);
// beyond the ceiling it saturates.
func parseCount(s string) (int64, bool) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return min(n, ceiling), n >= 0
	} else if errors.Is(err, strconv.ErrRange) {
		return ceiling, s[0] != '-'
	}
	f, err := strconv.ParseFloat(s, 64)
	switch {
	case err != nil && !errors.Is(err, strconv.ErrRange), math.IsNaN(f), f < 0:
		return 0, false
	case f >= float64(ceiling):
		return ceiling, true
	case f != math.Trunc(f):
		return 0, false
	}
	return int64(f), true
}
