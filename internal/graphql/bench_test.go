package graphql

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// fill repeats unit inside prefix/suffix until the JSON body would reach n bytes.
func fill(prefix, unit, suffix string, n int) string {
	var b strings.Builder
	b.WriteString(prefix)
	for b.Len()+len(unit)+len(suffix)+16 < n {
		b.WriteString(unit)
	}
	b.WriteString(suffix)
	return b.String()
}

// BenchmarkHostile prices hostile requests under the default limits, each as large as
// max_body_bytes (64 KiB) lets it be, next to the worked example's query: the time and
// memory of a refusal are bounded by the body cap and max_tokens, not by what the
// document would expand to.
//
//	go test -run '^$' -bench BenchmarkHostile -benchmem ./internal/graphql/
func BenchmarkHostile(b *testing.B) {
	p := compile(b, Config{}, "")
	frag := "{ ...F0 }\n"
	for i := 0; i < 40; i++ {
		frag += fmt.Sprintf("fragment F%d on Query { ...F%d ...F%d }\n", i, i+1, i+1)
	}
	frag += "fragment F40 on Query { users(first: 1) { id } }\n"
	cases := []struct {
		name string
		r    Request
	}{
		{"example", post(`query D($n: Int = 10) { me { name friends(first: $n) { ...U } } } fragment U on User { id name orders(last: 2) { total items { sku } } }`, `{"n": 5}`)},
		{"deep_nesting_at_max_depth", post("{"+strings.Repeat("a{", 14)+"b"+strings.Repeat("}", 15), "")},
		{"deep_nesting_64KiB", post(fill("{", "a{", "", DefaultMaxBodyBytes/2), "")},
		{"alias_bomb_64KiB", post(fill("{", "a:b ", "}", DefaultMaxBodyBytes), "")},
		{"fields_at_max_tokens", post("{"+strings.Repeat("a ", DefaultMaxTokens-3)+"}", "")},
		{"fragment_fanout_2^40", post(frag, "")},
		{"fragment_cycle", post(`{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }`, "")},
		{"list_multipliers", post(`{ a(first: 1000000) { b(first: 1000000) { c(first: 1000000) { id } } } }`, "")},
		{"garbage_64KiB", Request{Method: "POST", Body: bytes.Repeat([]byte("{"), DefaultMaxBodyBytes)}},
		{"body_10MB", Request{Method: "POST", Body: bytes.Repeat([]byte("a"), 10<<20)}},
	}
	for _, c := range cases {
		if int64(len(c.r.Body)) > DefaultMaxBodyBytes && !strings.HasPrefix(c.name, "body_") {
			b.Fatalf("%s: %d bytes, above the cap", c.name, len(c.r.Body))
		}
		b.Run(c.name, func(b *testing.B) {
			_, err := p.Price(c.r)
			if rf, ok := err.(*Refusal); ok {
				b.ReportMetric(0, "cost")
				b.Logf("refused by %s: %s", rf.Rule, rf.Detail)
			}
			b.SetBytes(int64(len(c.r.Body)))
			b.ReportAllocs()
			for b.Loop() {
				p.Price(c.r)
			}
		})
	}
}
