package halt

import (
	"net/http"
	"testing"
)

func TestCanonicalNames(t *testing.T) {
	for _, n := range []string{"RateLimit", "RateLimit-Policy", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After", "X-Other-thing"} {
		if got, want := canonical(n), http.CanonicalHeaderKey(n); got != want {
			t.Errorf("canonical(%q) = %q, want %q", n, got, want)
		}
	}
}
