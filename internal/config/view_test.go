package config

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// TestRuleView: the rule a descriptor matches has the view /config shows for its
// descriptor node (check and the admin API print the same view), and the view carries
// every field of the model a user reads.
func TestRuleView(t *testing.T) {
	s := mustParse(t, map[string]string{"saas.yaml": saasConfig})
	e := s.Effective().(*EffectiveConfig)
	user := e.Domains[0].Descriptors[2]
	r, ok := s.Match("saas", ents("user", "u-7"))
	if !ok || user.Key != "user" || user.Rule == nil {
		t.Fatalf("user rule: %v, node %+v", ok, user)
	}
	if v := r.View(); !reflect.DeepEqual(&v, user.Rule) {
		t.Fatalf("Match's rule view differs from /config's:\n%+v\n%+v", v, *user.Rule)
	}
	b, err := json.Marshal(r.View())
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`"name":"user"`, `"path":"user"`, `"cost":1`, `"allow_algorithm_override":true`,
		`"algorithm":"fixed_window"`, `"unit":"minute"`, `"unit_multiplier":1`, `"requests_per_unit":60`, `"requests":60`, `"period":"1m0s"`,
		`"quotas":[{"name":"monthly","period":"monthly","requests":10000,"time_zone":"Europe/Berlin"}]`, `"penalty":"abuse"`, `"file":"saas.yaml"`, `"line":`} {
		if !strings.Contains(string(b), w) {
			t.Errorf("rule view lacks %s:\n%s", w, b)
		}
	}
	pv := r.Penalty.View()
	if pv.Name != "abuse" || pv.Threshold != 3 || pv.Severity != 2 || strings.Join(pv.Ladder, " ") != "1m0s 5m0s 30m0s 24h0m0s" || pv.Decay != "1h0m0s" || pv.File != "" {
		t.Errorf("penalty view: %+v", pv)
	}
	// /config's penalties are the same view, located.
	if got := e.Penalties[0]; got.File != "saas.yaml" || got.Line == 0 || !reflect.DeepEqual(got.Ladder, pv.Ladder) {
		t.Errorf("effective penalty: %+v", got)
	}
	// A plan is shown as the rule it gives, its quotas as configured (no zone of their
	// own: the zone of the domain using the plan).
	var pro *RuleView
	for i := range e.Plans {
		if e.Plans[i].Name == "pro" {
			pro = &e.Plans[i]
		}
	}
	if pro == nil || pro.Plan != "pro" || pro.Penalty != "abuse" || len(pro.Quotas) != 2 || pro.Quotas[0].TimeZone != "Europe/Berlin" || pro.Quotas[1].TimeZone != "America/New_York" || len(pro.Limits) != 1 || pro.Limits[0].Burst != 300 {
		t.Errorf("plan pro: %+v", pro)
	}
}
