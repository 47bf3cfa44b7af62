package admin

import (
	"fmt"
	"testing"
	"time"
)

// TestGuardBounded: a flood of addresses never grows the table past its bound; past it
// new addresses share one entry (and are locked out together), and entries that may be
// forgotten make room again.
func TestGuardBounded(t *testing.T) {
	g := newGuard()
	g.maxLen = 100
	now := time.Unix(1_700_000_000, 0)
	for i := 0; i < 1000; i++ {
		g.fail(fmt.Sprintf("10.0.%d.%d", i/250, i%250), now)
	}
	if n := len(g.addrs); n > g.maxLen {
		t.Fatalf("%d entries, bound %d", n, g.maxLen)
	}
	if g.locked("10.9.9.9", now) == 0 {
		t.Fatal("an unknown address on a full table does not share the locked overflow entry")
	}
	later := now.Add(ForgetAfter + MaxLockout + time.Second)
	g.fail("10.9.9.9", later)
	if g.addrs["10.9.9.9"] == nil {
		t.Fatal("forgettable entries were not swept to make room")
	}
	if g.locked("10.9.9.8", later) != 0 {
		t.Fatal("an unknown address is locked once the table has room")
	}
}

func TestAddrKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:80":               "192.0.2.1",
		"[::ffff:192.0.2.1]:80":      "192.0.2.1",
		"[2001:db8:a:b:c:d:e:f]:443": "2001:db8:a:b::/64",
		"not an address":             "not an address",
	} {
		if got := addrKey(in); got != want {
			t.Errorf("addrKey(%q) = %q, want %q", in, got, want)
		}
	}
}
