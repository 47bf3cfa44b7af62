package authz_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/authz"
	"github.com/halt-envoy/halt-envoy/internal/config"
)

// resolveLimits defines one of each name an authz file takes from the rate-limit
// config: a penalty, a policy and plans.
const resolveLimits = `
domain: edge
default_plan: free
plans:
  free:
    rate_limit: {unit: minute, requests_per_unit: 10}
policies:
  SEARCH:
    rate_limit: {unit: minute, requests_per_unit: 5}
penalties:
  guessing: {threshold: 3, ladder: [10m], decay: 1h}
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
`

// TestResolveNames: invalid_key_penalty, a route's policy and anonymous.plan must name
// what the rate-limit config defines, as abuse.penalty must. Each misspelling is
// refused at load where both files are known (Resolve, a watched file's first load),
// FILE:LINE:COL: FIELD naming the name, and every problem of a file is reported at once.
func TestResolveNames(t *testing.T) {
	set, err := config.Parse(map[string][]byte{"limits.yaml": []byte(resolveLimits)})
	if err != nil {
		t.Fatal(err)
	}
	good := "domain: edge\ninvalid_key_penalty: guessing\nanonymous: {plan: free}\nroutes:\n  - {path: /a, cost: 1}\n  - {path: /b, cost: 2, policy: SEARCH}\n"
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"invalid_key_penalty", "domain: edge\ninvalid_key_penalty:  guesing\n",
			[]string{`:2:23: invalid_key_penalty: no penalty named "guesing" under penalties:`}},
		{"route policy", "domain: edge\nroutes:\n  - {path: /a, cost: 1}\n  - {path: /b, cost: 2, policy: SEARCHH}\n",
			[]string{`:4:33: routes[1].policy: no policy or preset named "SEARCHH"`}},
		{"anonymous plan", "domain: edge\nanonymous:\n  plan: gold\n",
			[]string{`:3:9: anonymous.plan: no plan named "gold" in the rate-limit config (plans: `}},
		{"all at once", "domain: edge\ninvalid_key_penalty: x\nanonymous: {plan: y}\nroutes:\n  - {path: /b, cost: 2, policy: z}\n",
			[]string{`:2:22: invalid_key_penalty: no penalty named "x"`, `:3:19: anonymous.plan: no plan named "y"`, `:5:33: routes[0].policy: no policy or preset named "z"`}},
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".yaml")
			os.WriteFile(p, []byte(c.yaml), 0o644)
			cfg, err := authz.LoadConfig(p) // the file alone cannot tell
			if err != nil {
				t.Fatal(err)
			}
			if err := cfg.Resolve(nil); err != nil {
				t.Fatalf("Resolve without rules yet: %v", err)
			}
			err = cfg.Resolve(set)
			for _, w := range c.want {
				if err == nil || !strings.Contains(err.Error(), p+w) {
					t.Errorf("Resolve: %v, want %q", err, p+w)
				}
			}
			_, err = authz.Watch(t.Context(), p, 20*time.Millisecond, func() *config.Set { return set }, nil)
			if err == nil || !strings.Contains(err.Error(), p+c.want[0]) {
				t.Errorf("first load: %v, want %q", err, p+c.want[0])
			}
		})
	}
	p := filepath.Join(dir, "good.yaml")
	os.WriteFile(p, []byte(good), 0o644)
	cfg, err := authz.LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Resolve(set); err != nil {
		t.Fatalf("Resolve of a file naming only what the config defines: %v", err)
	}
}
