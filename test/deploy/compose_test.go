package deploy_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/halt-envoy/halt-envoy/internal/config"
)

type composeService struct {
	name string
	raw  map[string]any
}

func (s composeService) env(key string) string {
	switch e := dig(s.raw, "environment").(type) {
	case map[string]any:
		return fmt.Sprint(e[key])
	case []any:
		for _, kv := range e {
			if k, v, ok := strings.Cut(fmt.Sprint(kv), "="); ok && k == key {
				return v
			}
		}
	}
	return ""
}

// mounts returns host path -> container path of the service's bind mounts.
func (s composeService) mounts(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, v := range list(s.raw, "volumes") {
		src, dst := "", ""
		switch m := v.(type) {
		case string:
			parts := strings.Split(m, ":")
			if len(parts) < 2 {
				t.Fatalf("%s: volume %q has no target", s.name, m)
			}
			src, dst = parts[0], parts[1]
		case map[string]any:
			src, dst = str(m, "source"), str(m, "target")
		}
		out[src] = dst
	}
	return out
}

// published returns the container ports the service publishes on the host, by host port.
func (s composeService) published(t *testing.T) map[int]int {
	t.Helper()
	out := map[int]int{}
	for _, p := range list(s.raw, "ports") {
		parts := strings.Split(fmt.Sprint(p), ":")
		host, err1 := strconv.Atoi(parts[0])
		ctr, err2 := strconv.Atoi(strings.Split(parts[len(parts)-1], "/")[0])
		if len(parts) != 2 || err1 != nil || err2 != nil {
			t.Fatalf("%s: port %q: want HOST:CONTAINER", s.name, p)
		}
		out[host] = ctr
	}
	return out
}

func (s composeService) command() []string {
	var out []string
	for _, c := range list(s.raw, "command") {
		out = append(out, fmt.Sprint(c))
	}
	return out
}

func loadCompose(t *testing.T) map[string]composeService {
	t.Helper()
	doc := yamlDoc(t, repo("docker-compose.yaml"))
	svcs := map[string]composeService{}
	for name, raw := range dig(doc, "services").(map[string]any) {
		svcs[name] = composeService{name, raw.(map[string]any)}
	}
	for _, want := range []string{"halt", "redis", "envoy", "upstream", "prometheus", "grafana"} {
		if _, ok := svcs[want]; !ok {
			t.Fatalf("docker-compose.yaml has no service %q", want)
		}
	}
	return svcs
}

func port(t *testing.T, what, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: %q: %v", what, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s: %q: %v", what, addr, err)
	}
	return n
}

func TestCompose(t *testing.T) {
	svcs := loadCompose(t)
	halt := svcs["halt"]

	// Every bind-mounted host path exists in the repository.
	mountOf := map[string]map[string]string{}
	for name, s := range svcs {
		mountOf[name] = s.mounts(t)
		for src := range mountOf[name] {
			if !strings.HasPrefix(src, "./") {
				continue // a named volume
			}
			if _, err := os.Stat(repo(src)); err != nil {
				t.Errorf("service %s mounts %s, which does not exist: %v", name, src, err)
			}
		}
	}

	// halt: built from the Dockerfile, config dir mounted where HALT_CONFIG points, redis store.
	if str(halt.raw, "build", "dockerfile") != "Dockerfile" && str(halt.raw, "build") != "." {
		t.Error("halt must be built from the repository's Dockerfile")
	}
	cfgTarget := mountOf["halt"]["./config"]
	if cfgTarget == "" || cfgTarget != halt.env("HALT_CONFIG") {
		t.Errorf("./config is mounted at %q but HALT_CONFIG is %q", cfgTarget, halt.env("HALT_CONFIG"))
	}
	set, err := config.Load(repo("config"))
	if err != nil {
		t.Fatalf("the config dir mounted into halt does not load: %v", err)
	}
	store := halt.env("HALT_STORE")
	if !strings.HasPrefix(store, "redis://redis:6379") {
		t.Errorf("HALT_STORE = %q, want redis://redis:6379/...", store)
	}
	grpcPort := port(t, "HALT_GRPC_ADDR", halt.env("HALT_GRPC_ADDR"))
	httpPort := port(t, "HALT_HTTP_ADDR", halt.env("HALT_HTTP_ADDR"))

	// envoy: runs the mounted examples/envoy/envoy.yaml, whose halt cluster is halt's gRPC
	// port, whose listener is published, and whose domain halt serves.
	envoy := svcs["envoy"]
	envoyTarget := mountOf["envoy"]["./examples/envoy/envoy.yaml"]
	cmd := strings.Join(envoy.command(), " ")
	if envoyTarget == "" || !strings.Contains(cmd, "-c "+envoyTarget) {
		t.Errorf("envoy mounts examples/envoy/envoy.yaml at %q but runs %q", envoyTarget, cmd)
	}
	e := edge(t, repo("examples", "envoy", "envoy.yaml"))
	for name, c := range e.clusters {
		sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		svc, ok := svcs[sa.GetAddress()]
		if !ok {
			t.Errorf("envoy cluster %s points at %s, not a compose service", name, sa.GetAddress())
			continue
		}
		var want int
		switch svc.name {
		case "halt":
			want = grpcPort
		case "upstream":
			for _, a := range svc.command() {
				if v, ok := strings.CutPrefix(a, "-listen="); ok {
					want = port(t, "upstream -listen", v)
				}
			}
		}
		if int(sa.GetPortValue()) != want {
			t.Errorf("envoy cluster %s: %s:%d, but the service listens on %d", name, sa.GetAddress(), sa.GetPortValue(), want)
		}
	}
	if pub := envoy.published(t); pub[int(e.listenerPort)] != int(e.listenerPort) {
		t.Errorf("envoy listens on %d but publishes %v", e.listenerPort, pub)
	}
	if !contains(set.Domains(), e.rateLimit.GetDomain()) {
		t.Errorf("envoy's domain %q is not in the mounted config (%v)", e.rateLimit.GetDomain(), set.Domains())
	}
	if !strings.Contains(string(mustRead(t, repo("docker-compose.yaml"))), fmt.Sprintf("localhost:%d/", e.listenerPort)) {
		t.Errorf("the curl loop in docker-compose.yaml's comment does not use port %d", e.listenerPort)
	}

	// prometheus: its config dir is deploy/prometheus, it scrapes halt's HTTP port, and the
	// rule files it names exist next to it.
	promDir := mountOf["prometheus"]["./deploy/prometheus"]
	if promDir == "" {
		t.Fatal("prometheus does not mount ./deploy/prometheus")
	}
	var cfgFlag string
	for _, a := range svcs["prometheus"].command() {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			cfgFlag = v
		}
	}
	if filepath.Dir(cfgFlag) != promDir {
		t.Errorf("prometheus --config.file=%s is not in the mounted %s", cfgFlag, promDir)
	}
	pc := yamlDoc(t, repo("deploy", "prometheus", filepath.Base(cfgFlag)))
	for _, rf := range list(pc, "rule_files") {
		if _, err := os.Stat(repo("deploy", "prometheus", fmt.Sprint(rf))); err != nil {
			t.Errorf("prometheus.yml rule file %v: %v", rf, err)
		}
	}
	var scrapesHalt bool
	for _, sc := range list(pc, "scrape_configs") {
		if str(sc, "job_name") != "halt-envoy" {
			continue
		}
		for _, tgt := range list(sc, "static_configs", 0, "targets") {
			if fmt.Sprint(tgt) == fmt.Sprintf("halt:%d", httpPort) {
				scrapesHalt = true
			}
		}
		if p := str(sc, "metrics_path"); p != "" && p != "/metrics" {
			t.Errorf("halt-envoy scrape path %q, want /metrics", p)
		}
	}
	if !scrapesHalt {
		t.Errorf("prometheus.yml has no job halt-envoy scraping halt:%d", httpPort)
	}

	// grafana: provisioning points at the mounted dashboards and at the prometheus service.
	g := mountOf["grafana"]
	if g["./deploy/grafana/provisioning"] != "/etc/grafana/provisioning" {
		t.Error("grafana must mount ./deploy/grafana/provisioning at /etc/grafana/provisioning")
	}
	prov := yamlDoc(t, repo("deploy", "grafana", "provisioning", "dashboards", "halt.yaml"))
	if p := str(prov, "providers", 0, "options", "path"); p != g["./deploy/grafana/dashboards"] {
		t.Errorf("dashboard provider reads %q but dashboards are mounted at %q", p, g["./deploy/grafana/dashboards"])
	}
	ds := yamlDoc(t, repo("deploy", "grafana", "provisioning", "datasources", "prometheus.yaml"))
	promPort := 9090
	if u := str(ds, "datasources", 0, "url"); u != fmt.Sprintf("http://prometheus:%d", promPort) {
		t.Errorf("grafana data source url %q, want http://prometheus:%d", u, promPort)
	}
	if home := svcs["grafana"].env("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"); home != "" &&
		filepath.Dir(home) != g["./deploy/grafana/dashboards"] {
		t.Errorf("grafana home dashboard %q is not in the mounted dashboards", home)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestComposeDemoLoop runs the demo's curl loop against a real halt-envoy with the
// repository's config, sending what examples/envoy/envoy.yaml sends for
// `curl -H 'x-user-id: alice' localhost:10000/`: ten OKs, then over the limit.
func TestComposeDemoLoop(t *testing.T) {
	h := startHalt(t, repo("config"))
	domain, ds := demoDescriptors(t)
	client := rlsClient(t, h.GRPCAddr)
	var codes []string
	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := client.ShouldRateLimit(ctx, rlsRequest(domain, ds))
		cancel()
		if err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		switch resp.GetOverallCode() {
		case rlspb.RateLimitResponse_OK:
			codes = append(codes, "200")
		case rlspb.RateLimitResponse_OVER_LIMIT:
			codes = append(codes, "429")
		default:
			codes = append(codes, resp.GetOverallCode().String())
		}
	}
	want := strings.Repeat("200 ", 10) + strings.TrimSpace(strings.Repeat("429 ", 10))
	if got := strings.Join(codes, " "); got != want {
		t.Errorf("the demo loop answers\n  %s\nwant\n  %s", got, want)
	}
}
