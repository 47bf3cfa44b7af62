package admin

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Brute-force back-off of the admin API, per connecting address (an IPv6 address counts
// by its /64, which one host usually holds whole). docs/saas.md documents these numbers.
const (
	// MaxFailures refused calls in a row from one address lock it out.
	MaxFailures = 5
	// FirstLockout is the first lockout; each refused call after a lockout locks the
	// address again for twice as long, up to MaxLockout.
	FirstLockout = time.Second
	MaxLockout   = 5 * time.Minute
	// ForgetAfter is how long an address with no refused call is remembered.
	ForgetAfter = 15 * time.Minute
	// MaxTracked bounds the addresses remembered; past it (and after forgetting what
	// may be forgotten) new addresses share one entry, so an attacker with many
	// addresses cannot grow memory, only lock out the shared entry.
	MaxTracked = 10_000
)

// guard counts refused calls per source address and locks out an address that keeps
// guessing. A locked-out address is refused before its token is looked at, so the
// lockout tells nothing about whether a guess was right.
type guard struct {
	mu     sync.Mutex
	addrs  map[string]*strikes
	shared strikes   // of the addresses that found the table full
	swept  time.Time // last sweep of forgettable entries
	maxLen int
}

type strikes struct {
	fails    int       // refused calls since the last lockout or success
	lockouts int       // lockouts so far: the next one lasts FirstLockout << lockouts
	until    time.Time // end of the current lockout
	last     time.Time // last refused call
}

func newGuard() *guard { return &guard{addrs: map[string]*strikes{}, maxLen: MaxTracked} }

// addrKey is the address a call counts against: its IP, an IPv6 one cut to its /64.
func addrKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// locked returns how long key stays locked out at now (zero: not locked).
func (g *guard) locked(key string, now time.Time) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.addrs[key]
	if s == nil {
		if len(g.addrs) < g.maxLen {
			return 0
		}
		s = &g.shared
	}
	if d := s.until.Sub(now); d > 0 {
		return d
	}
	return 0
}

// fail records a refused call from key at now and returns the lockout it starts (zero:
// none yet).
func (g *guard) fail(key string, now time.Time) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.addrs[key]
	if s == nil {
		if len(g.addrs) >= g.maxLen {
			g.sweep(now)
		}
		if len(g.addrs) < g.maxLen {
			s = &strikes{}
			g.addrs[key] = s
		} else {
			s = &g.shared
		}
	}
	if now.Sub(s.last) > ForgetAfter {
		*s = strikes{} // quiet long enough: start over
	}
	s.last = now
	s.fails++
	// After a first lockout, every refused call locks again (for twice as long).
	if s.fails < MaxFailures && s.lockouts == 0 {
		return 0
	}
	d := MaxLockout
	if s.lockouts < 30 && FirstLockout<<s.lockouts < MaxLockout {
		d = FirstLockout << s.lockouts
	}
	s.lockouts++
	s.fails = 0
	s.until = now.Add(d)
	return d
}

// success forgets key's refused calls.
func (g *guard) success(key string) {
	g.mu.Lock()
	delete(g.addrs, key)
	g.mu.Unlock()
}

// sweep forgets entries that are neither locked nor recently refused, at most once a
// second (so a flood of new addresses on a full table costs one pass a second).
func (g *guard) sweep(now time.Time) {
	if now.Sub(g.swept) < time.Second {
		return
	}
	g.swept = now
	for k, s := range g.addrs {
		if !now.Before(s.until) && now.Sub(s.last) > ForgetAfter {
			delete(g.addrs, k)
		}
	}
}
