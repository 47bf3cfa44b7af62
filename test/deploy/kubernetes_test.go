package deploy_test

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/halt-envoy/halt-envoy/internal/config"
)

type manifest struct {
	file string
	doc  map[string]any
}

func (m manifest) kind() string { return str(m.doc, "kind") }
func (m manifest) name() string { return str(m.doc, "metadata", "name") }
func (m manifest) ns() string   { return str(m.doc, "metadata", "namespace") }
func (m manifest) String() string {
	return fmt.Sprintf("%s %s/%s (%s)", m.kind(), m.ns(), m.name(), m.file)
}

// manifests reads every document of every YAML file under deploy/kubernetes and
// examples/istio.
func manifests(t *testing.T) []manifest {
	t.Helper()
	var out []manifest
	for _, dir := range []string{repo("deploy", "kubernetes"), repo("examples", "istio")} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || (filepath.Ext(path) != ".yaml" && filepath.Ext(path) != ".yml") {
				return nil
			}
			for _, doc := range yamlDocs(t, path) {
				out = append(out, manifest{strings.TrimPrefix(path, root+"/"), doc})
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// index finds manifests by kind and name.
type index map[string]manifest

func (ix index) get(t *testing.T, kind, name string) manifest {
	t.Helper()
	m, ok := ix[kind+"/"+name]
	if !ok {
		t.Fatalf("no %s named %q", kind, name)
	}
	return m
}

func (ix index) all(kind string) []manifest {
	var out []manifest
	for _, m := range ix {
		if m.kind() == kind {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name() < out[j].name() })
	return out
}

// labelsMatch reports whether every selector label is among labels.
func labelsMatch(selector, labels any) bool {
	sel, _ := selector.(map[string]any)
	ls, _ := labels.(map[string]any)
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if ls[k] != v {
			return false
		}
	}
	return true
}

func toInt(v any) int {
	switch n := v.(type) {
	case int:
		return n
	case float64:
		return int(n)
	}
	return -1
}

func TestKubernetesManifests(t *testing.T) {
	ms := manifests(t)
	ix := index{}
	clusterScoped := map[string]bool{"Namespace": true, "Kustomization": true}
	for _, m := range ms {
		if str(m.doc, "apiVersion") == "" || m.kind() == "" || m.name() == "" {
			t.Errorf("%s: every manifest needs apiVersion, kind and metadata.name", m.file)
			continue
		}
		if !clusterScoped[m.kind()] && m.ns() == "" {
			t.Errorf("%s: no metadata.namespace", m)
		}
		key := m.kind() + "/" + m.name()
		if _, dup := ix[key]; dup {
			t.Errorf("%s: defined twice", m)
		}
		ix[key] = m
	}

	// kustomization.yaml lists exactly the manifests of deploy/kubernetes.
	kust := ix.get(t, "Kustomization", "halt-envoy")
	listed := map[string]bool{}
	for _, r := range list(kust.doc, "resources") {
		listed["deploy/kubernetes/"+fmt.Sprint(r)] = true
	}
	for _, m := range ms {
		if strings.HasPrefix(m.file, "deploy/kubernetes/") && m.kind() != "Kustomization" && !listed[m.file] {
			t.Errorf("%s is not listed in kustomization.yaml", m.file)
		}
	}
	for f := range listed {
		found := false
		for _, m := range ms {
			found = found || m.file == f
		}
		if !found {
			t.Errorf("kustomization.yaml lists %s, which holds no manifest", f)
		}
	}

	ns := ix.get(t, "Namespace", "halt-system").name()
	for _, m := range ms {
		if strings.HasPrefix(m.file, "deploy/kubernetes/") && !clusterScoped[m.kind()] && m.ns() != ns {
			t.Errorf("%s: namespace %q, want %q", m, m.ns(), ns)
		}
	}

	// Deployment.
	dep := ix.get(t, "Deployment", "halt-envoy")
	pod := dig(dep.doc, "spec", "template")
	podLabels := dig(pod, "metadata", "labels")
	if toInt(dig(dep.doc, "spec", "replicas")) != 2 {
		t.Errorf("Deployment replicas = %v, want 2", dig(dep.doc, "spec", "replicas"))
	}
	if !labelsMatch(dig(dep.doc, "spec", "selector", "matchLabels"), podLabels) {
		t.Error("Deployment selector does not match its pod labels")
	}
	ctrs := list(pod, "spec", "containers")
	if len(ctrs) != 1 {
		t.Fatalf("want one container, got %d", len(ctrs))
	}
	c := ctrs[0].(map[string]any)
	env := map[string]map[string]any{}
	for _, e := range list(c, "env") {
		env[str(e, "name")] = e.(map[string]any)
	}
	ports := map[string]int{}
	for _, p := range list(c, "ports") {
		ports[str(p, "name")] = toInt(dig(p, "containerPort"))
	}
	resolve := func(p any) int {
		if s, ok := p.(string); ok {
			if n, ok := ports[s]; ok {
				return n
			}
			t.Errorf("port name %q is not a container port (%v)", s, ports)
			return -1
		}
		return toInt(p)
	}
	httpPort := port(t, "HALT_HTTP_ADDR", str(env["HALT_HTTP_ADDR"], "value"))
	grpcPort := port(t, "HALT_GRPC_ADDR", str(env["HALT_GRPC_ADDR"], "value"))
	if ports["http"] != httpPort || ports["grpc"] != grpcPort {
		t.Errorf("container ports %v disagree with HALT_HTTP_ADDR/HALT_GRPC_ADDR (%d, %d)", ports, httpPort, grpcPort)
	}
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if got := str(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path %q, want %q", probe, got, path)
		}
		if got := resolve(dig(c, probe, "httpGet", "port")); got != httpPort {
			t.Errorf("%s port %d, want halt's HTTP port %d", probe, got, httpPort)
		}
	}
	for _, r := range []string{"requests.cpu", "requests.memory", "limits.memory"} {
		k, v, _ := strings.Cut(r, ".")
		if dig(c, "resources", k, v) == nil {
			t.Errorf("container resources lack %s", r)
		}
	}
	sc := dig(c, "securityContext")
	if dig(sc, "readOnlyRootFilesystem") != true || dig(sc, "allowPrivilegeEscalation") != false ||
		fmt.Sprint(dig(sc, "capabilities", "drop")) != "[ALL]" {
		t.Errorf("container securityContext %v: want readOnlyRootFilesystem, no privilege escalation, drop ALL", sc)
	}
	if dig(pod, "spec", "securityContext", "runAsNonRoot") != true && dig(sc, "runAsNonRoot") != true {
		t.Error("pod must run as non-root")
	}
	// The store URL comes from a Secret that exists and has the key.
	ref := dig(env["HALT_STORE"], "valueFrom", "secretKeyRef")
	if ref == nil {
		t.Error("HALT_STORE must come from a Secret (secretKeyRef)")
	} else {
		sec := ix.get(t, "Secret", str(ref, "name"))
		if dig(sec.doc, "stringData", str(ref, "key")) == nil && dig(sec.doc, "data", str(ref, "key")) == nil {
			t.Errorf("Secret %s has no key %q", sec.name(), str(ref, "key"))
		}
	}
	// The config: a ConfigMap volume mounted as a directory where HALT_CONFIG points.
	var cmName string
	for _, m := range list(c, "volumeMounts") {
		if str(m, "mountPath") != str(env["HALT_CONFIG"], "value") {
			continue
		}
		if dig(m, "subPath") != nil {
			t.Error("the config volume must not use subPath: subPath mounts never see ConfigMap updates")
		}
		for _, v := range list(pod, "spec", "volumes") {
			if str(v, "name") == str(m, "name") {
				cmName = str(v, "configMap", "name")
			}
		}
	}
	if cmName == "" {
		t.Fatalf("no ConfigMap volume mounted at HALT_CONFIG %q", str(env["HALT_CONFIG"], "value"))
	}
	set := configMapSet(t, ix.get(t, "ConfigMap", cmName))

	// Service.
	svc := ix.get(t, "Service", "halt-envoy")
	if !labelsMatch(dig(svc.doc, "spec", "selector"), podLabels) {
		t.Error("Service selector does not match the Deployment's pod labels")
	}
	svcPorts := map[string]int{}
	for _, p := range list(svc.doc, "spec", "ports") {
		name := str(p, "name")
		svcPorts[name] = toInt(dig(p, "port"))
		if got, want := resolve(dig(p, "targetPort")), ports[name]; got != want {
			t.Errorf("Service port %s targets %d, want container port %d", name, got, want)
		}
	}
	for _, p := range list(svc.doc, "spec", "ports") {
		if str(p, "name") == "grpc" && str(p, "appProtocol") != "grpc" {
			t.Error("the grpc Service port needs appProtocol: grpc (Istio must speak HTTP/2 to it)")
		}
	}
	if svcPorts["grpc"] != grpcPort || svcPorts["http"] != httpPort {
		t.Errorf("Service ports %v, want grpc %d and http %d", svcPorts, grpcPort, httpPort)
	}
	fqdn := fmt.Sprintf("%s.%s.svc.cluster.local", svc.name(), svc.ns())

	// HPA, PDB, ServiceMonitor.
	hpa := ix.get(t, "HorizontalPodAutoscaler", "halt-envoy")
	if str(hpa.doc, "apiVersion") != "autoscaling/v2" || str(hpa.doc, "spec", "scaleTargetRef", "kind") != "Deployment" ||
		str(hpa.doc, "spec", "scaleTargetRef", "name") != dep.name() {
		t.Error("HPA must be autoscaling/v2 and scale the Deployment")
	}
	if str(hpa.doc, "spec", "metrics", 0, "resource", "name") != "cpu" {
		t.Error("HPA should scale on CPU")
	}
	if toInt(dig(hpa.doc, "spec", "minReplicas")) < 2 {
		t.Error("HPA minReplicas < 2")
	}
	pdb := ix.get(t, "PodDisruptionBudget", "halt-envoy")
	if !labelsMatch(dig(pdb.doc, "spec", "selector", "matchLabels"), podLabels) {
		t.Error("PodDisruptionBudget selector does not match the pods")
	}
	if toInt(dig(pdb.doc, "spec", "minAvailable")) >= toInt(dig(hpa.doc, "spec", "minReplicas")) {
		t.Error("PodDisruptionBudget minAvailable must be below the minimum replica count, or nodes never drain")
	}
	smon := ix.get(t, "ServiceMonitor", "halt-envoy")
	if str(smon.doc, "apiVersion") != "monitoring.coreos.com/v1" {
		t.Error("ServiceMonitor apiVersion")
	}
	if !labelsMatch(dig(smon.doc, "spec", "selector", "matchLabels"), dig(svc.doc, "metadata", "labels")) {
		t.Error("ServiceMonitor selector does not match the Service's labels")
	}
	if p := str(smon.doc, "spec", "endpoints", 0, "port"); svcPorts[p] != httpPort {
		t.Errorf("ServiceMonitor scrapes port %q, want the Service's http port", p)
	}
	if str(smon.doc, "spec", "endpoints", 0, "path") != "/metrics" {
		t.Error("ServiceMonitor path must be /metrics")
	}
	if !contains(anyStrings(dig(smon.doc, "spec", "namespaceSelector", "matchNames")), svc.ns()) {
		t.Error("ServiceMonitor namespaceSelector misses the Service's namespace")
	}

	// Istio.
	t.Run("EnvoyFilter", func(t *testing.T) {
		istioRateLimit(t, ix.get(t, "EnvoyFilter", "halt-envoy-ratelimit"), set, fmt.Sprintf("outbound|%d||%s", svcPorts["grpc"], fqdn))
	})
	t.Run("ext_authz", func(t *testing.T) {
		ap := ix.get(t, "AuthorizationPolicy", "halt-envoy-ext-authz")
		if str(ap.doc, "spec", "action") != "CUSTOM" {
			t.Error("AuthorizationPolicy action must be CUSTOM")
		}
		provider := str(ap.doc, "spec", "provider", "name")
		var found bool
		for _, op := range ix.all("IstioOperator") {
			for _, p := range list(op.doc, "spec", "meshConfig", "extensionProviders") {
				if str(p, "name") != provider {
					continue
				}
				found = true
				g := dig(p, "envoyExtAuthzGrpc")
				if str(g, "service") != fqdn || toInt(dig(g, "port")) != svcPorts["grpc"] {
					t.Errorf("provider %s points at %s:%v, want %s:%d", provider, str(g, "service"), dig(g, "port"), fqdn, svcPorts["grpc"])
				}
				if dig(g, "timeout") == nil {
					t.Errorf("provider %s: set a timeout (Istio's default is 600s)", provider)
				}
			}
		}
		if !found {
			t.Errorf("AuthorizationPolicy provider %q is not an extensionProvider of mesh-config.yaml", provider)
		}
		ef := ix.get(t, "EnvoyFilter", "halt-envoy-ratelimit")
		if fmt.Sprint(dig(ap.doc, "spec", "selector", "matchLabels")) != fmt.Sprint(dig(ef.doc, "spec", "workloadSelector", "labels")) {
			t.Error("AuthorizationPolicy and EnvoyFilter select different workloads")
		}
	})
}

func anyStrings(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, x := range l {
		out = append(out, fmt.Sprint(x))
	}
	return out
}

// configMapSet validates the halt configuration embedded in a ConfigMap, as halt would
// load the mounted directory.
func configMapSet(t *testing.T, cm manifest) *config.Set {
	t.Helper()
	files := map[string][]byte{}
	for k, v := range dig(cm.doc, "data").(map[string]any) {
		if filepath.Ext(k) == ".yaml" || filepath.Ext(k) == ".yml" {
			files[k] = []byte(fmt.Sprint(v))
		}
	}
	if len(files) == 0 {
		t.Fatalf("%s holds no *.yaml key", cm)
	}
	set, err := config.Parse(files)
	if err != nil {
		t.Fatalf("%s: the embedded config does not load: %v", cm, err)
	}
	return set
}

// patchProto converts an EnvoyFilter patch value (Envoy's YAML, snake_case) to proto.
func patchProto(t *testing.T, value any, m proto.Message) {
	t.Helper()
	j, err := json.Marshal(value)
	if err != nil {
		t.Fatal(err)
	}
	if err := protojson.Unmarshal(j, m); err != nil {
		t.Fatalf("patch value is not a valid %s: %v", m.ProtoReflect().Descriptor().FullName(), err)
	}
}

func istioRateLimit(t *testing.T, ef manifest, set *config.Set, wantCluster string) {
	var rl *ratelimitv3.RateLimit
	var vh *routev3.VirtualHost
	for i, p := range list(ef.doc, "spec", "configPatches") {
		where := fmt.Sprintf("configPatches[%d]", i)
		switch str(p, "applyTo") {
		case "HTTP_FILTER":
			if str(p, "patch", "operation") != "INSERT_BEFORE" ||
				str(p, "match", "listener", "filterChain", "filter", "subFilter", "name") != "envoy.filters.http.router" {
				t.Errorf("%s: the rate-limit filter must be inserted before the router", where)
			}
			hf := &hcmv3.HttpFilter{}
			patchProto(t, dig(p, "patch", "value"), hf)
			validateDeep(t, where, hf)
			if hf.GetName() != "envoy.filters.http.ratelimit" {
				t.Errorf("%s: filter %q", where, hf.GetName())
				continue
			}
			rl = &ratelimitv3.RateLimit{}
			if err := hf.GetTypedConfig().UnmarshalTo(rl); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
		case "VIRTUAL_HOST":
			if str(p, "patch", "operation") != "MERGE" {
				t.Errorf("%s: rate_limits must be MERGEd into the virtual host", where)
			}
			vh = &routev3.VirtualHost{}
			patchProto(t, dig(p, "patch", "value"), vh)
			// A partial VirtualHost (no name/domains): validate what it carries.
			for j, r := range vh.GetRateLimits() {
				validateDeep(t, fmt.Sprintf("%s rate_limits[%d]", where, j), r)
			}
		default:
			t.Errorf("%s: unexpected applyTo %q", where, str(p, "applyTo"))
		}
	}
	if rl == nil || vh == nil {
		t.Fatal("the EnvoyFilter needs an HTTP_FILTER and a VIRTUAL_HOST patch")
	}
	if !contains(set.Domains(), rl.GetDomain()) {
		t.Errorf("domain %q is not in the ConfigMap's config (%v)", rl.GetDomain(), set.Domains())
	}
	if got := rl.GetRateLimitService().GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != wantCluster {
		t.Errorf("cluster_name %q, want %q (the Service's grpc port)", got, wantCluster)
	}
	reqs := []struct {
		req   request
		rules []string
	}{
		{request{map[string]string{":path": "/", "x-user-id": "alice"}, "203.0.113.9"}, []string{"per_address", "per_user", "any_path"}},
		{request{map[string]string{":path": "/api/orders"}, "203.0.113.9"}, []string{"per_address", "api"}},
		{request{map[string]string{":path": "/login"}, "203.0.113.9"}, []string{"per_address", "path_/login*"}},
	}
	for _, r := range reqs {
		var got []string
		ds := descriptors(t, vh.GetRateLimits(), rl.GetStage(), r.req)
		for _, d := range ds {
			rule, ok := set.Match(rl.GetDomain(), d)
			if !ok {
				t.Errorf("descriptor %v matches no rule", d)
				got = append(got, "<none>")
				continue
			}
			got = append(got, rule.Name)
		}
		if strings.Join(got, ",") != strings.Join(r.rules, ",") {
			t.Errorf("request %v: descriptors %v reach %v, want %v", r.req, ds, got, r.rules)
		}
	}
}
