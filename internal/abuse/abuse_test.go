package abuse

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	c := Config{Penalty: "p", Fanout: &FanoutDetector{Detector: Detector{Window: time.Minute, Max: 3}}, NetworkChange: &Network{Detector: Detector{Window: time.Hour, Max: 2}}}
	if errs := c.Check(); len(errs) != 0 {
		t.Fatal(errs)
	}
	if c.Fanout.Severity != 1 || c.NetworkChange.IPv4Prefix != 24 || c.NetworkChange.IPv6Prefix != 48 {
		t.Fatalf("defaults: %+v %+v", c.Fanout, c.NetworkChange)
	}
	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{"no penalty", Config{Fanout: &FanoutDetector{Detector: Detector{Window: time.Minute, Max: 3}}}, "abuse.penalty: required"},
		{"no detector", Config{Penalty: "p"}, "no detector is configured"},
		{"zero window", Config{Penalty: "p", Fanout: &FanoutDetector{Detector: Detector{Max: 3}}}, "abuse.fanout.window: must be whole seconds"},
		{"fractional window", Config{Penalty: "p", Fanout: &FanoutDetector{Detector: Detector{Window: 1500 * time.Millisecond, Max: 3}}}, "abuse.fanout.window"},
		{"zero max", Config{Penalty: "p", AuthFailures: &Detector{Window: time.Minute}}, "abuse.auth_failures.max: must be between 1"},
		{"negative severity", Config{Penalty: "p", AuthFailures: &Detector{Window: time.Minute, Max: 1, Severity: -1}}, "abuse.auth_failures.severity"},
		{"spike factor", Config{Penalty: "p", Spike: &Spike{Factor: 0.5}}, "abuse.spike.factor: must be above 1"},
		{"spike half-life", Config{Penalty: "p", Spike: &Spike{Window: time.Hour, HalfLife: time.Minute}}, "abuse.spike.half_life: must be whole seconds, at least window"},
		{"spike half-life for factor", Config{Penalty: "p", Spike: &Spike{Window: time.Minute, HalfLife: 3 * time.Minute, Factor: 5}}, "abuse.spike.half_life: 3m0s is too short for factor 5 over window 1m0s: a spike could never be detected (want above factor x window x ln 2 = 3m28s)"},
		{"prefix", Config{Penalty: "p", NetworkChange: &Network{Detector: Detector{Window: time.Minute, Max: 1}, IPv4Prefix: 33}}, "abuse.network_change.ipv4_prefix: must be between 1 and 32, got 33"},
	} {
		errs := tc.c.Check()
		if len(errs) == 0 || !strings.Contains(fmt.Sprint(errs), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, errs, tc.want)
		}
	}
}

func TestSpikeThreshold(t *testing.T) {
	c := Config{Penalty: "p", Spike: &Spike{Factor: 4, Min: 20}}
	if errs := c.Check(); len(errs) != 0 {
		t.Fatal(errs)
	}
	sp := c.Spike
	if sp.Window != time.Minute || sp.HalfLife != 20*time.Minute || sp.Severity != 1 {
		t.Fatalf("defaults %+v", sp)
	}
	// A steady 10 a minute makes the decayed count 10 x half-life / ln 2 (in minutes):
	// the baseline expects 10 a minute, 4 x 10 = 40; 1 a minute would be 4: min 20 wins.
	steady := func(perMinute float64) float64 { return perMinute * 20 / math.Ln2 }
	if got := sp.Expected(steady(10)); math.Abs(got-10) > 1e-9 {
		t.Fatalf("expected %v, want 10", got)
	}
	if got := sp.Threshold(steady(10)); math.Abs(got-40) > 1e-9 {
		t.Fatalf("threshold %v, want 40", got)
	}
	if got := sp.Threshold(steady(1)); got != 20 {
		t.Fatalf("threshold %v, want min 20", got)
	}
	// One window is 1/20 of a half-life: alpha = 1 - 2^(-1/20).
	if got, want := sp.Alpha(), 1-math.Exp2(-0.05); got != want || math.Abs(got-0.03406) > 1e-5 {
		t.Fatalf("alpha %v, want %v", got, want)
	}
}

func TestNetworkOf(t *testing.T) {
	n := Network{IPv4Prefix: 24, IPv6Prefix: 48}
	for in, want := range map[string]string{
		"198.51.100.7":        "198.51.100.0/24",
		"::ffff:198.51.100.7": "198.51.100.0/24",
		"2001:db8:1:2::5":     "2001:db8:1::/48",
		"not an address":      "",
		"":                    "",
	} {
		if got := n.NetworkOf(in); got != want {
			t.Errorf("NetworkOf(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRecordBounded: a flood of identities keeps the most recent ones, each with its
// last detections.
func TestRecordBounded(t *testing.T) {
	r := NewRecord(3, 2)
	for i := 0; i < 10; i++ {
		r.Add("d", Detection{Identity: fmt.Sprintf("id%d", i%5), Count: int64(i)})
	}
	if got := r.Get("d", "id0"); got != nil {
		t.Fatalf("an identity past the bound kept: %v", got)
	}
	// id4 was evicted by id0..id2 between its two detections: only the last is kept.
	if got := r.Get("d", "id4"); len(got) != 1 || got[0].Count != 9 {
		t.Fatalf("id4: %+v", got)
	}
	r.Add("d", Detection{Identity: "id4", Count: 10})
	r.Add("d", Detection{Identity: "id4", Count: 11})
	if got := r.Get("d", "id4"); len(got) != 2 || got[0].Count != 10 || got[1].Count != 11 {
		t.Fatalf("id4, its last two: %+v", got)
	}
	if r.Get("other", "id4") != nil {
		t.Fatal("domains mixed")
	}
	r.mu.Lock()
	n := r.order.Len()
	r.mu.Unlock()
	if n != 3 {
		t.Fatalf("%d identities kept, bound 3", n)
	}
}

func TestAddress(t *testing.T) {
	for _, c := range []struct {
		in     string
		prefix int
		want   string
	}{
		{"203.0.113.9", 64, "203.0.113.9"},
		{"::ffff:203.0.113.9", 64, "203.0.113.9"},
		{"2001:db8:1:2:aaaa::9", 64, "2001:db8:1:2::/64"},
		{"2001:DB8:1:2:0:0:0:1", 64, "2001:db8:1:2::/64"},
		{"fe80::1%eth0", 64, "fe80::/64"},
		{"2001:db8:1:2::9", 0, "2001:db8:1:2::/64"},
		{"2001:db8:1:2::9", 48, "2001:db8:1::/48"},
		{"2001:db8:1:2::9", 128, "2001:db8:1:2::9/128"},
		{"2001:db8::/64", 64, ""},
		{"bogus", 64, ""},
	} {
		got, ok := Address(c.in, c.prefix)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("Address(%q, %d) = %q %v, want %q", c.in, c.prefix, got, ok, c.want)
		}
	}
	if v, err := Identity(APIKeyKey, strings.Repeat("AB", 32), 64); err != nil || v != strings.Repeat("ab", 32) {
		t.Errorf("Identity of a hash in capitals: %q %v", v, err)
	}
	if _, err := Identity("plan", "x", 64); !errors.Is(err, ErrNotIdentity) {
		t.Errorf("Identity of another key: %v", err)
	}
}
