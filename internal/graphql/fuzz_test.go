package graphql

import (
	"errors"
	"testing"
)

// FuzzPrice prices arbitrary bodies with the example route's schema and costs, and
// without a schema: whatever arrives, nothing panics, a refusal names one of the rules
// and says how, and a priced request costs at least 1 and at most max_cost.
func FuzzPrice(f *testing.F) {
	for _, s := range []string{
		`{"query":"{ me { id name } }"}`,
		`{"query":"query D($n: Int = 10) { me { friends(first: $n) { ...U } } } fragment U on User { orders(last: 2) { items { sku } } }","variables":{"n":5}}`,
		`[{"query":"{ users(first: 2) { id } }"},{"query":"{ me { id } }"}]`,
		`{"query":"{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"}`,
		`{"query":"{ __schema { types { name } } }"}`,
		`{"extensions":{"persistedQuery":{"version":1,"sha256Hash":"0000000000000000000000000000000000000000000000000000000000000000"}}}`,
		`{"query":"{ a: me { id } b: search(text: \"x\", limit: 99999999999999999999) { ... on User { id } } }"}`,
		`SELECT 1`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	rules := map[string]bool{RuleBody: true, RuleTokens: true, RuleDepth: true, RuleAliases: true, RuleCost: true, RuleBatch: true,
		RuleSyntax: true, RuleOperation: true, RuleFragment: true, RuleIntrospection: true, RulePersistedQuery: true}
	withSchema := example(f)
	without := compile(f, Config{}, "")
	f.Fuzz(func(t *testing.T, body []byte, graphqlType bool) {
		ct := "application/json"
		if graphqlType {
			ct = "application/graphql"
		}
		for _, p := range []*Pricer{withSchema, without} {
			for _, r := range []Request{{Method: "POST", ContentType: ct, Body: body}, {Method: "GET", RawQuery: string(body)}} {
				res, err := p.Price(r)
				if err != nil {
					var rf *Refusal
					if !errors.As(err, &rf) || !rules[rf.Rule] || rf.Detail == "" {
						t.Fatalf("not a refusal by a rule: %#v", err)
					}
					continue
				}
				if res.Cost < 1 || res.Cost > p.maxCost || len(res.Operations) == 0 {
					t.Fatalf("priced %+v", res)
				}
			}
		}
	})
}
