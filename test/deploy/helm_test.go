package deploy_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rlsconf "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/strvals"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/refenv"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/internal/testutil/strictyaml"
	"github.com/halt-envoy/halt-envoy/internal/xds/xdstest"
)

// chartDir is the Helm chart, relative to the repository.
const chartDir = "deploy/helm/halt-envoy"

// helmRelease is the release the tests install: named as the plain manifests are, so
// checkHalt finds the same names.
func helmRelease() chartutil.ReleaseOptions {
	return chartutil.ReleaseOptions{Name: "halt-envoy", Namespace: "halt-system", Revision: 1, IsInstall: true}
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(repo(chartDir))
	if err != nil {
		t.Fatalf("%s: %v", chartDir, err)
	}
	return c
}

// values parses YAML values as `helm install -f` or `--set` would give them.
func values(t *testing.T, y string) map[string]any {
	t.Helper()
	v := map[string]any{}
	if err := yaml.Unmarshal([]byte(y), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// renderChart renders the chart as `helm template` does (values validated against
// values.schema.json) and returns the manifests by template, without decoding them.
func renderChart(t *testing.T, c *chart.Chart, vals map[string]any) (map[string]string, error) {
	t.Helper()
	rv, err := chartutil.ToRenderValuesWithSchemaValidation(c, vals, helmRelease(), chartutil.DefaultCapabilities, false)
	if err != nil {
		return nil, err
	}
	return engine.Render(c, rv)
}

// renderedManifests decodes every rendered template strictly, like the plain manifests.
func renderedManifests(t *testing.T, out map[string]string) []manifest {
	t.Helper()
	names := make([]string, 0, len(out))
	for n := range out {
		names = append(names, n)
	}
	sort.Strings(names)
	var ms []manifest
	for _, n := range names {
		if filepath.Ext(n) != ".yaml" || strings.TrimSpace(out[n]) == "" {
			continue
		}
		ms = append(ms, decodeFile(t, "helm:"+n, []byte(out[n]))...)
	}
	return ms
}

// exampleValues are the least a configMap installation needs: one configuration file.
const exampleValues = `
config:
  files:
    example.yaml: |
      domain: example
      descriptors:
        - key: remote_address
          rate_limit: {name: per_address, unit: minute, requests_per_unit: 600}
`

// TestHelmChart lints the chart with Helm's linter and renders it with several value
// sets; every rendering decodes strictly into the Kubernetes types and goes through the
// cross-checks of the plain manifests (checkHalt).
func TestHelmChart(t *testing.T) {
	linter := lint.AllWithKubeVersionAndSchemaValidation(repo(chartDir), values(t, exampleValues), helmRelease().Namespace, nil, false)
	for _, m := range linter.Messages {
		if m.Severity >= support.WarningSev {
			t.Errorf("helm lint: %v", m)
		} else {
			t.Logf("helm lint: %v", m)
		}
	}
	c := loadChart(t)
	for _, tc := range []struct {
		name   string
		values string
		check  func(t *testing.T, ix index, h haltDeployment)
	}{
		{"defaults and one file", exampleValues, func(t *testing.T, ix index, h haltDeployment) {
			if h.set == nil || !contains(h.set.Domains(), "example") {
				t.Error("the default config (domain example) is not in force")
			}
			if h.deployment.Spec.Replicas != nil {
				t.Error("with autoscaling on, the HPA owns the replica count: no spec.replicas")
			}
		}},
		{"istio config and admin token", `
config:
  files:
    istio-gateway.yaml: |
` + indent(istioGatewayConfig(t), "      ") + `
adminToken:
  value: s3cr3t-token
`, func(t *testing.T, ix index, h haltDeployment) {
			if !contains(h.set.Domains(), "istio_gateway") {
				t.Errorf("domains %v", h.set.Domains())
			}
			if s := get[*corev1.Secret](t, ix, "halt-envoy-admin"); s.StringData["admin-token"] != "s3cr3t-token" {
				t.Error("the admin token Secret does not hold the token")
			}
		}},
		{"xds and existing secrets", `
config:
  source: xds
xds:
  serverURL: envoy-gateway.envoy-gateway-system.svc.cluster.local:18001
store:
  existingSecret: my-store
adminToken:
  existingSecret: my-admin
`, func(t *testing.T, ix index, h haltDeployment) {
			if h.set != nil {
				t.Error("config from xDS, yet a ConfigMap is mounted")
			}
			for _, m := range ix {
				if _, ok := m.obj.(*corev1.ConfigMap); ok {
					t.Errorf("config from xDS, yet the chart renders %s", m)
				}
			}
		}},
		{"no autoscaling", exampleValues + `
autoscaling:
  enabled: false
replicaCount: 2
preStopSleepSeconds: 0
`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vals := values(t, tc.values)
			out, err := renderChart(t, c, vals)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			ms := renderedManifests(t, out)
			ix := newIndex(t, ms)
			for _, m := range ms {
				if !clusterScoped[m.kind()] && m.ns() != helmRelease().Namespace {
					t.Errorf("%s: namespace %q, want the release's %q", m, m.ns(), helmRelease().Namespace)
				}
			}
			if strings.Contains(tc.values, "existingSecret: my-store") {
				// The Secrets are the user's: add them as they would exist.
				ix["Secret/my-store"] = manifest{obj: &corev1.Secret{ObjectMeta: objectMeta("my-store"), StringData: map[string]string{"store-url": "redis://r:6379"}}}
				ix["Secret/my-admin"] = manifest{obj: &corev1.Secret{ObjectMeta: objectMeta("my-admin"), StringData: map[string]string{"admin-token": "t"}}}
			}
			if strings.Contains(tc.values, "autoscaling:\n  enabled: false") {
				// checkHalt wants an HPA; without one, the Deployment's replicas is the count.
				dep := get[*appsv1.Deployment](t, ix, "halt-envoy")
				if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 {
					t.Errorf("replicas %v, want 2", dep.Spec.Replicas)
				}
				return
			}
			h := checkHalt(t, ix, "halt-envoy")
			if tc.check != nil {
				tc.check(t, ix, h)
			}
			// Every field of every rendered manifest is checked by name, as in the files.
			for _, n := range sortedKeys(out) {
				if filepath.Ext(n) != ".yaml" {
					continue
				}
				docs, err := strictyaml.Split([]byte(out[n]))
				if err != nil {
					t.Fatal(err)
				}
				for _, doc := range docs {
					strictyaml.Misspell(t, "helm:"+n, doc, func(b []byte) error { _, err := decodeManifest(b); return err })
				}
			}
		})
	}
}

// TestHelmValuesRefuseMisspelling wants a misspelt or ill-typed value refused by
// values.schema.json, naming it, before anything renders.
func TestHelmValuesRefuseMisspelling(t *testing.T) {
	c := loadChart(t)
	for _, tc := range []struct{ values, want string }{
		{"replicaCont: 3", "replicaCont"},
		{"autoscaling:\n  minReplica: 3", "minReplica"},
		{"store:\n  urll: redis://r:6379", "urll"},
		{"adminToken:\n  valeu: x", "valeu"},
		{"config:\n  source: configmap", "source"},
		{"image:\n  pullPolicy: Sometimes", "pullPolicy"},
		{"ports:\n  grpc: 70000", "grpc"},
		{"resources:\n  requests:\n    cpus: 100m", "cpus"},
		{"serviceMonitor:\n  intervall: 10s", "intervall"},
		{"logFormat: yaml", "logFormat"},
	} {
		tc.values = "\n" + tc.values
		_, err := renderChart(t, c, values(t, exampleValues+tc.values))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("values %q: %v, want an error naming %q", tc.values, err, tc.want)
		}
		linter := lint.AllWithKubeVersionAndSchemaValidation(repo(chartDir), values(t, exampleValues+tc.values), helmRelease().Namespace, nil, false)
		var named bool
		for _, m := range linter.Messages {
			named = named || (m.Severity == support.ErrorSev && strings.Contains(m.Err.Error(), tc.want))
		}
		if !named {
			t.Errorf("helm lint with values %q: no error naming %q (%v)", tc.values, tc.want, linter.Messages)
		}
	}
	// A misspelt field inside a value the chart passes through to Kubernetes fails the
	// strict decoding of the rendered Deployment, by its path.
	out, err := renderChart(t, c, values(t, exampleValues+"securityContext:\n  readOnlyRootFilesystm: true"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = decodeManifest([]byte(out["halt-envoy/templates/deployment.yaml"]))
	if err == nil || !strings.Contains(err.Error(), "readOnlyRootFilesystm") {
		t.Errorf("a misspelt securityContext field: %v", err)
	}
}

// istioGatewayConfig is the halt configuration of deploy/kubernetes/configmap.yaml.
func istioGatewayConfig(t *testing.T) string {
	t.Helper()
	for _, m := range loadManifests(t, "deploy/kubernetes") {
		if cm, ok := m.obj.(*corev1.ConfigMap); ok {
			return cm.Data["istio-gateway.yaml"]
		}
	}
	t.Fatal("no ConfigMap in deploy/kubernetes")
	return ""
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n")
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func objectMeta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: helmRelease().Namespace}
}

// TestHelmReleaseName installs under another release name: the objects follow it, and
// the monitoring job stays halt-envoy.
func TestHelmReleaseName(t *testing.T) {
	c := loadChart(t)
	opts := helmRelease()
	opts.Name = "edge"
	rv, err := chartutil.ToRenderValuesWithSchemaValidation(c, values(t, exampleValues), opts, chartutil.DefaultCapabilities, false)
	if err != nil {
		t.Fatal(err)
	}
	out, err := engine.Render(c, rv)
	if err != nil {
		t.Fatal(err)
	}
	ix := newIndex(t, renderedManifests(t, out))
	h := checkHalt(t, ix, "edge-halt-envoy")
	if h.fqdn != "edge-halt-envoy.halt-system.svc.cluster.local" {
		t.Errorf("fqdn %s", h.fqdn)
	}
}

// TestHelmDocsInstall renders the chart with the --set and --set-file flags of
// docs/kubernetes.md's helm install, parsed by Helm's own flag parser.
func TestHelmDocsInstall(t *testing.T) {
	vals := map[string]any{}
	if err := strvals.ParseInto("store.url=rediss://:PASSWORD@redis.example:6380/0", vals); err != nil {
		t.Fatal(err)
	}
	err := strvals.ParseIntoFile(`config.files.edge\.yaml=config/envoy-demo.yaml`, vals, func(rs []rune) (any, error) {
		return string(mustRead(t, repo(string(rs)))), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	doc := string(mustRead(t, repo("docs", "kubernetes.md")))
	for _, flag := range []string{`--set store.url='rediss://:PASSWORD@redis.example:6380/0'`, `--set-file 'config.files.edge\.yaml=config/envoy-demo.yaml'`} {
		if !strings.Contains(doc, flag) {
			t.Errorf("docs/kubernetes.md no longer shows %s: keep this test in step", flag)
		}
	}
	out, err := renderChart(t, loadChart(t), vals)
	if err != nil {
		t.Fatal(err)
	}
	h := checkHalt(t, newIndex(t, renderedManifests(t, out)), "halt-envoy")
	if fmt.Sprint(h.set.Domains()) != "[envoy_demo]" {
		t.Errorf("domains %v, want those of config/envoy-demo.yaml alone", h.set.Domains())
	}
}

// TestHelmNeedsAConfig refuses a configMap installation without a configuration file.
func TestHelmNeedsAConfig(t *testing.T) {
	_, err := renderChart(t, loadChart(t), nil)
	if err == nil || !strings.Contains(err.Error(), "config.files") {
		t.Errorf("no config files: %v, want an error naming config.files", err)
	}
}

// TestHelmXDSRuns starts halt as the chart's container with config.source xds would
// start: the image's environment, then the rendered container's (Secrets resolved from
// the rendered Secret), against a real go-control-plane management server. halt must be
// ready on the chart's readiness probe, serve the pushed configuration and not the
// image's bundled one.
func TestHelmXDSRuns(t *testing.T) {
	srv := xdstest.Start(t, "127.0.0.1:0", "halt-envoy", nil)
	srv.Set(t, "1", &rlsconf.RateLimitConfig{Name: "pushed", Domain: "pushed", Descriptors: []*rlsconf.RateLimitDescriptor{
		{Key: "k", RateLimit: &rlsconf.RateLimitPolicy{Unit: rlsconf.RateLimitUnit_MINUTE, RequestsPerUnit: 2}},
	}})
	out, err := renderChart(t, loadChart(t), values(t, fmt.Sprintf("config:\n  source: xds\nxds:\n  serverURL: %q\nstore:\n  url: memory://\n", srv.Addr)))
	if err != nil {
		t.Fatal(err)
	}
	ix := newIndex(t, renderedManifests(t, out))
	h := checkHalt(t, ix, "halt-envoy")
	c := h.deployment.Spec.Template.Spec.Containers[0]

	// The image's bundled configuration, where halt would find it if it read it.
	bundled := t.TempDir()
	if err := os.WriteFile(filepath.Join(bundled, "bundled.yaml"), []byte("domain: bundled\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, v := range refenv.Vars() {
		known[v.Name] = true
	}
	var env []string
	for _, kv := range testutil.EnvWithoutHalt() {
		if name, _, _ := strings.Cut(kv, "="); !known[name] {
			env = append(env, kv)
		}
	}
	for k, v := range imageEnv(t) {
		env = append(env, k+"="+v)
	}
	// What the container runs: the chart's arguments replace the image's CMD, which names
	// the bundled configuration; a path to it is mapped to the test's bundled directory.
	argv := imageArgv(t, c.Command, c.Args)
	if !contains(imagePaths(t), argv[0]) {
		t.Fatalf("the container runs %q, which the image does not hold (%v)", argv[0], imagePaths(t))
	}
	args := argv[1:]
	for i, a := range args {
		if a == "/etc/halt-envoy/config" {
			args[i] = bundled
		}
	}
	grpcAddr, httpAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.Name == "HALT_GRPC_ADDR":
			v = grpcAddr
		case e.Name == "HALT_HTTP_ADDR":
			v = httpAddr
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			v = get[*corev1.Secret](t, ix, e.ValueFrom.SecretKeyRef.Name).StringData[e.ValueFrom.SecretKeyRef.Key]
		case e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil && e.ValueFrom.ResourceFieldRef.Resource == "limits.memory":
			q := c.Resources.Limits[corev1.ResourceMemory]
			v = fmt.Sprint(q.Value())
		case e.ValueFrom != nil:
			t.Fatalf("env %s: the test cannot resolve %v", e.Name, e.ValueFrom)
		}
		env = append(env, e.Name+"="+v)
	}
	// The decision clock starts on testutil.ClockStart: the three calls against the pushed
	// limit of two a minute must not straddle a minute's edge.
	env = append(env, testutil.ClockEnv(0))
	p := testutil.StartHalt(t, testutil.HaltOptions{
		Binary: haltBinary(t), Args: args, Env: env, NoAddrFlags: true, GRPCAddr: grpcAddr, HTTPAddr: httpAddr,
		ReadyPath: c.ReadinessProbe.HTTPGet.Path, ReadyTimeout: 30 * time.Second, StopSignal: os.Interrupt,
	})
	testutil.WaitFor(t, 20*time.Second, func() bool { return srv.ACKed("1") })
	client := rlsClient(t, p.GRPCAddr)
	call := func(domain string) *rlspb.RateLimitResponse {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := client.ShouldRateLimit(ctx, rlsRequest(domain, [][]config.Entry{{{Key: "k", Value: "v"}}}))
		if err != nil {
			t.Fatalf("%s: %v", domain, err)
		}
		return r
	}
	for i, want := range []rlspb.RateLimitResponse_Code{rlspb.RateLimitResponse_OK, rlspb.RateLimitResponse_OK, rlspb.RateLimitResponse_OVER_LIMIT} {
		if got := call("pushed").OverallCode; got != want {
			t.Fatalf("pushed config, call %d: %v, want %v", i+1, got, want)
		}
	}
	if r := call("bundled"); r.Statuses[0].CurrentLimit != nil {
		t.Errorf("the image's bundled config is in force with config.source xds (%v): the chart's arguments must replace the image's CMD", r)
	}
}

// imageEnv is the image's ENV (the Dockerfile's final stage).
func imageEnv(t *testing.T) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, l := range dockerfile(t) {
		if f := strings.Fields(l); len(f) == 2 && strings.EqualFold(f[0], "ENV") {
			k, v, ok := strings.Cut(f[1], "=")
			if !ok {
				t.Fatalf("Dockerfile %q: want ENV KEY=VALUE", l)
			}
			env[k] = v
		}
	}
	return env
}
