package engine_test

import (
	"testing"
	"unicode/utf8"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
)

// TestKeysAreUTF8: a request value that is not UTF-8 (internal/wire lets it through)
// becomes a store key that is, so PostgreSQL, MongoDB and DynamoDB take it, and that
// no other value shares: not the value spelled with a literal \x, not another byte.
// Keys of valid values are unchanged.
func TestKeysAreUTF8(t *testing.T) {
	key := func(v string) string {
		return string(engine.AppendIdentity(nil, "d", []config.Entry{{Key: "user", Value: v}}, nil))
	}
	seen := map[string]string{}
	for _, v := range []string{"\xff", "\xfe", `\xff`, "\\\xff", "a\xffb", "a\xff\xfeb", "\xe2\x82", "€", "é|=@\\", "\xc3", "é", "\xed\xa0\x80"} {
		k := key(v)
		if !utf8.ValidString(k) {
			t.Errorf("key of %q is not UTF-8: %q", v, k)
		}
		if other, dup := seen[k]; dup {
			t.Errorf("values %q and %q share the key %q", other, v, k)
		}
		seen[k] = v
	}
	for v, want := range map[string]string{
		"€":            `d|user=€`,
		"é|=@\\":       `d|user=é\|\=\@\\`,
		"\xff":         `d|user=\xff`,
		`\xff`:         `d|user=\\xff`,
		"a\xe2\x82b":   `d|user=a\xe2\x82b`,
		"\xed\xa0\x80": `d|user=\xed\xa0\x80`, // a surrogate is not UTF-8
	} {
		if got := key(v); got != want {
			t.Errorf("key of %q = %q, want %q", v, got, want)
		}
	}
}
