package envoygateway_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/internal/testutil/strictyaml"
)

// root is the repository, relative to this package's directory.
const root = "../.."

func repo(parts ...string) string { return filepath.Join(append([]string{root}, parts...)...) }

// TestMain removes the binaries built for the run.
func TestMain(m *testing.M) { testutil.Main(m) }

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// egValues is what examples/envoy-gateway/envoy-gateway-values.yaml gives Envoy
// Gateway's Helm chart: the EnvoyGateway configuration under config.envoyGateway (the
// chart adds apiVersion and kind).
type egValues struct {
	Config struct {
		EnvoyGateway json.RawMessage `json:"envoyGateway"`
	} `json:"config"`
}

// decodeValues decodes the values file strictly, its EnvoyGateway configuration into
// Envoy Gateway's own type.
func decodeValues(doc []byte) (*egv1a1.EnvoyGatewaySpec, error) {
	var v egValues
	if err := strictyaml.Decode(doc, &v); err != nil {
		return nil, err
	}
	spec := &egv1a1.EnvoyGatewaySpec{}
	if err := strictyaml.DecodeJSON(v.Config.EnvoyGateway, spec); err != nil {
		return nil, fmt.Errorf("config.envoyGateway: %v", err)
	}
	// The Deployment patch is raw JSON to Envoy Gateway's type: it is a partial
	// Deployment, decoded as one (a misspelt field would be patched in and ignored).
	if p := spec.Provider; p != nil && p.Kubernetes != nil && p.Kubernetes.RateLimitDeployment != nil && p.Kubernetes.RateLimitDeployment.Patch != nil {
		if err := strictyaml.DecodeJSON(p.Kubernetes.RateLimitDeployment.Patch.Value.Raw, &appsv1.Deployment{}); err != nil {
			return nil, fmt.Errorf("config.envoyGateway.provider.kubernetes.rateLimitDeployment.patch.value: %v", err)
		}
	}
	return spec, nil
}

// routeObjects are the kinds examples/envoy-gateway/ratelimit.yaml may hold.
func newRouteObject(apiVersion, kind string) (any, error) {
	switch apiVersion + " " + kind {
	case "gateway.networking.k8s.io/v1 HTTPRoute":
		return &gwapiv1.HTTPRoute{}, nil
	case "gateway.networking.k8s.io/v1 Gateway":
		return &gwapiv1.Gateway{}, nil
	case "gateway.envoyproxy.io/v1alpha1 BackendTrafficPolicy":
		return &egv1a1.BackendTrafficPolicy{}, nil
	}
	return nil, fmt.Errorf("%s %s: a kind the test does not know; add its Go type", apiVersion, kind)
}

func decodeRouteObject(doc []byte) (any, error) {
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	j, err := strictyaml.ToJSON(doc)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(j, &tm); err != nil {
		return nil, err
	}
	if tm.APIVersion == "" || tm.Kind == "" {
		return nil, fmt.Errorf("apiVersion and kind are required (the document is %.60s...)", j)
	}
	obj, err := newRouteObject(tm.APIVersion, tm.Kind)
	if err != nil {
		return nil, err
	}
	if err := strictyaml.DecodeJSON(j, obj); err != nil {
		return nil, fmt.Errorf("%s: %v", tm.Kind, err)
	}
	return obj, nil
}

func loadValues(t *testing.T) *egv1a1.EnvoyGatewaySpec {
	t.Helper()
	path := repo("examples", "envoy-gateway", "envoy-gateway-values.yaml")
	spec, err := decodeValues(mustRead(t, path))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return spec
}

// TestEnvoyGatewayValues checks the EnvoyGateway configuration: Redis as the backend, no
// tracing (halt has none yet), halt's image.
func TestEnvoyGatewayValues(t *testing.T) {
	spec := loadValues(t)
	rl := spec.RateLimit
	if rl == nil || rl.Backend.Type != egv1a1.RedisBackendType || rl.Backend.Redis == nil ||
		(rl.Backend.Redis.URL == nil && rl.Backend.Redis.URLRef == nil) {
		t.Fatalf("rateLimit.backend: want a Redis URL, got %+v", rl)
	}
	if rl.Telemetry != nil && rl.Telemetry.Tracing != nil {
		t.Error("rateLimit.telemetry.tracing: halt refuses TRACING_ENABLED=true (no OTLP tracing yet)")
	}
	dep := rateLimitDeployment(t, spec)
	if dep.Container == nil || dep.Container.Image == nil || !strings.HasPrefix(*dep.Container.Image, haltImage(t)+":") {
		t.Errorf("rateLimitDeployment.container.image: want %s:TAG", haltImage(t))
	}
}

// rateLimitDeployment is the EnvoyGateway's rate-limit Deployment settings.
func rateLimitDeployment(t *testing.T, spec *egv1a1.EnvoyGatewaySpec) *egv1a1.KubernetesDeploymentSpec {
	t.Helper()
	if spec.Provider == nil || spec.Provider.Type != egv1a1.ProviderTypeKubernetes || spec.Provider.Kubernetes == nil ||
		spec.Provider.Kubernetes.RateLimitDeployment == nil {
		t.Fatal("provider.kubernetes.rateLimitDeployment is missing")
	}
	return spec.Provider.Kubernetes.RateLimitDeployment
}

// haltImage is the image deploy/kubernetes runs, without its tag.
func haltImage(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*image:\s*([^\s:]+):`).FindSubmatch(mustRead(t, repo("deploy", "kubernetes", "deployment.yaml")))
	if m == nil {
		t.Fatal("deploy/kubernetes/deployment.yaml: no image")
	}
	return string(m[1])
}

// TestBackendTrafficPolicy decodes ratelimit.yaml into Envoy Gateway's and the Gateway
// API's types and checks the policy targets the route of the file with global rules.
func TestBackendTrafficPolicy(t *testing.T) {
	path := repo("examples", "envoy-gateway", "ratelimit.yaml")
	docs, err := strictyaml.Split(mustRead(t, path))
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string]bool{}
	var policies []*egv1a1.BackendTrafficPolicy
	for i, doc := range docs {
		obj, err := decodeRouteObject(doc)
		if err != nil {
			t.Fatalf("%s (document %d): %v", path, i+1, err)
		}
		switch o := obj.(type) {
		case *gwapiv1.HTTPRoute:
			routes[o.Namespace+"/"+o.Name] = true
		case *egv1a1.BackendTrafficPolicy:
			policies = append(policies, o)
		}
	}
	if len(policies) == 0 {
		t.Fatalf("%s: no BackendTrafficPolicy", path)
	}
	for _, p := range policies {
		for _, ref := range p.Spec.TargetRefs {
			if ref.Kind != "HTTPRoute" || !routes[p.Namespace+"/"+string(ref.Name)] {
				t.Errorf("BackendTrafficPolicy %s targets %s %s, not an HTTPRoute of the file", p.Name, ref.Kind, ref.Name)
			}
		}
		rl := p.Spec.RateLimit
		if rl == nil || rl.Global == nil || len(rl.Global.Rules) == 0 {
			t.Fatalf("BackendTrafficPolicy %s: want global rate-limit rules (served by halt)", p.Name)
		}
		for i, r := range rl.Global.Rules {
			if r.Limit.Requests == 0 || r.Limit.Unit == "" {
				t.Errorf("BackendTrafficPolicy %s rule %d: a limit needs requests and a unit", p.Name, i)
			}
		}
	}
}

// TestExamplesRefuseMisspeltFields renames every field of both files in turn and wants
// each refused with its name.
func TestExamplesRefuseMisspeltFields(t *testing.T) {
	values := repo("examples", "envoy-gateway", "envoy-gateway-values.yaml")
	strictyaml.Misspell(t, values, mustRead(t, values), func(b []byte) error { _, err := decodeValues(b); return err },
		"resources.requests", "resources.limits")
	route := repo("examples", "envoy-gateway", "ratelimit.yaml")
	docs, err := strictyaml.Split(mustRead(t, route))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range docs {
		strictyaml.Misspell(t, route, doc, func(b []byte) error { _, err := decodeRouteObject(b); return err })
	}
}
