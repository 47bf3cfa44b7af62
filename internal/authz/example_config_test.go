package authz_test

import (
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/authz"
	"github.com/halt-envoy/halt-envoy/internal/config"
)

// TestShippedExample keeps examples/authz loadable and consistent with config/: its
// domain exists, its routes' policies and its invalid-key penalty are defined.
func TestShippedExample(t *testing.T) {
	for _, f := range []string{"authz.yaml", "graphql.yaml"} {
		t.Run(f, func(t *testing.T) { shippedExample(t, "../../examples/authz/"+f) })
	}
}

func shippedExample(t *testing.T, path string) {
	cfg, err := authz.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	set, err := config.Load("../../config")
	if err != nil {
		t.Fatal(err)
	}
	if !set.HasDomain(cfg.Domain) {
		t.Fatalf("domain %q is not in config/", cfg.Domain)
	}
	for _, r := range cfg.Routes {
		if r.Policy != "" {
			if _, ok := set.Policy(r.Policy); !ok {
				t.Errorf("route %s: unknown policy %q", r.Path, r.Policy)
			}
		}
	}
	if _, ok := set.PenaltyPolicy(cfg.InvalidKeyPenalty); !ok {
		t.Errorf("invalid_key_penalty %q is not defined", cfg.InvalidKeyPenalty)
	}
	if cfg.Abuse != nil {
		if _, ok := set.PenaltyPolicy(cfg.Abuse.Penalty); !ok {
			t.Errorf("abuse.penalty %q is not defined", cfg.Abuse.Penalty)
		}
	}
	// The demo keys map to plans the config knows.
	for _, k := range cfg.APIKeys {
		if rule, ok := set.Match(cfg.Domain, []config.Entry{{Key: "customer", Value: k.Customer}, {Key: "plan", Value: k.Plan}}); !ok || rule.PlanFallback {
			t.Errorf("key of %s: plan %q does not resolve in domain %s", k.Customer, k.Plan, cfg.Domain)
		}
	}
}
