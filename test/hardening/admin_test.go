package hardening

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestAdminBruteForce, through the binary: the start-up log holds nothing derived from the
// admin token; a burst of wrong tokens writes the refusal warning a bounded number of
// times; past admin.MaxFailures the address is locked out with 429 and Retry-After, the
// right token included (no oracle); once the lockout ends the right token works.
func TestAdminBruteForce(t *testing.T) {
	const token = "correct-horse-battery-staple"
	p := start(t, nil, "--admin-token", token)
	url := "http://" + p.HTTPAddr + "/admin/v1/quotas?domain=edge&descriptor=user=u"
	sum := sha256.Sum256([]byte(token))
	hash := hex.EncodeToString(sum[:])
	if log := p.Log.String(); !strings.Contains(log, "admin API enabled") {
		t.Fatalf("no start-up line about the admin API:\n%s", log)
	} else if strings.Contains(log, "token_sha256") || strings.Contains(log, hash[:6]) {
		t.Fatalf("the start-up log holds something derived from the token:\n%s", log)
	}

	const guesses = 50
	var codes []int
	for i := 0; i < guesses; i++ {
		code, _, _ := get(t, url, "Authorization", fmt.Sprintf("Bearer guess-%d", i))
		codes = append(codes, code)
	}
	if codes[0] != 401 || codes[guesses-1] != 429 {
		t.Fatalf("wrong tokens answered %v: want 401 first and 429 once locked out", codes)
	}
	code, _, h := get(t, url, "Authorization", "Bearer "+token)
	if code != 429 || h.Get("Retry-After") == "" {
		t.Fatalf("the right token from a locked-out address: %d (Retry-After %q), want 429", code, h.Get("Retry-After"))
	}
	if n := strings.Count(p.Log.String(), "admin call refused"); n == 0 || n > 2 {
		t.Fatalf("%d refused-call warnings for %d wrong tokens, want 1 or 2 (one per 10 s):\n%s", n, guesses, p.Log.String())
	}
	// Once the lockout ends (1 s: calls refused while locked out do not count), the
	// right token gets past authentication; poll for it rather than sleep.
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, _, _ = get(t, url, "Authorization", "Bearer "+token)
		if code != 401 && code != 429 {
			break // past authentication (400: the test rule has no quota)
		}
		if code != 429 || time.Now().After(deadline) {
			t.Fatalf("the right token after the lockout: %d", code)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if strings.Contains(p.Log.String(), hash[:6]) {
		t.Fatal("a log line holds a prefix of the token's hash")
	}
}
