package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
)

func TestAdaptiveBlock(t *testing.T) {
	set, err := config.Parse(map[string][]byte{"a.yaml": []byte(`
domain: d
descriptors:
  - key: api
    rate_limit: {unit: second, requests_per_unit: 100}
    adaptive:
      query: sum(rate(errors[1m])) / sum(rate(requests[1m]))
      interval: 30s
      bad_above: 0.05
      good_below: 0.01
      min: 0.1
`)})
	if err != nil {
		t.Fatal(err)
	}
	rules := set.AdaptiveRules()
	if len(rules) != 1 {
		t.Fatalf("%d adaptive rules", len(rules))
	}
	a := rules[0].Adaptive
	if a.Interval != 30*time.Second || a.BadAbove != 0.05 || a.GoodBelow != 0.01 || a.Min != 0.1 || a.Max != 1 || a.Decrease != 0.5 || a.Increase != 0.1 {
		t.Fatalf("decoded %+v", a)
	}
	if v := rules[0].View(); v.Adaptive == nil || v.Adaptive.Interval != "30s" {
		t.Fatalf("view %+v", v.Adaptive)
	}

	for _, c := range []struct{ name, yaml, want string }{
		{"min above max", "adaptive: {query: up, bad_above: 1, min: 0.8, max: 0.5}", "a.yaml:6:46: descriptors[0].adaptive.min: 0.8 is above max 0.5"},
		{"unknown key", "adaptive: {query: up, bad_above: 1, mni: 0.8}", "descriptors[0].adaptive.mni: unknown key (valid here: query, interval, bad_above, good_below, min, max, decrease, increase)"},
		{"no bad_above", "adaptive: {query: up}", "descriptors[0].adaptive.bad_above: required"},
		{"not a number", "adaptive: {query: up, bad_above: high}", "descriptors[0].adaptive.bad_above: must be a number"},
		{"band upside down", "adaptive: {query: up, bad_above: 0.1, good_below: 0.2}", "descriptors[0].adaptive.good_below: 0.2 is above bad_above 0.1"},
		{"bad interval", "adaptive: {query: up, bad_above: 1, interval: 7s}", "descriptors[0].adaptive.interval: must divide a day"},
	} {
		y := "domain: d\ndescriptors:\n  - key: api\n    rate_limit: {unit: second, requests_per_unit: 100}\n\n    " + c.yaml + "\n"
		_, err := config.Parse(map[string][]byte{"a.yaml": []byte(y)})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v\nwant %q", c.name, err, c.want)
		}
	}
	_, err = config.Parse(map[string][]byte{"a.yaml": []byte("domain: d\ndescriptors:\n  - key: api\n    adaptive: {query: up, bad_above: 1}\n")})
	if err == nil || !strings.Contains(err.Error(), "a.yaml:4:5: descriptors[0].adaptive: adaptive scales this descriptor's own limits") {
		t.Errorf("adaptive without a limit: %v", err)
	}
}
