package headers

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		names []string
		want  Families
	}{
		{nil, Families{}},
		{[]string{"none"}, Families{}},
		{[]string{""}, Families{}},
		{[]string{"ietf"}, Families{IETF: true}},
		{[]string{" x-ratelimit "}, Families{XRateLimit: true}},
		{[]string{"ietf", "x-ratelimit"}, Families{IETF: true, XRateLimit: true}},
	} {
		got, err := Parse(c.names...)
		if err != nil || got != c.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", c.names, got, err, c.want)
		}
	}
	if _, err := Parse("ietf", "X-RateLimit"); err == nil || !strings.Contains(err.Error(), `"X-RateLimit"`) {
		t.Errorf("unknown family: %v", err)
	}
}

func TestSeconds(t *testing.T) {
	for us, want := range map[int64]int64{-5: 0, 0: 0, 1: 1, 999_999: 1, 1_000_000: 1, 1_000_001: 2, 59_500_000: 60} {
		if got := Seconds(us); got != want {
			t.Errorf("Seconds(%d) = %d, want %d", us, got, want)
		}
	}
}
