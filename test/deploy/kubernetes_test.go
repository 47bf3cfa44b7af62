package deploy_test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"google.golang.org/protobuf/encoding/protojson"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	networkingapi "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	istionetworking "istio.io/client-go/pkg/apis/networking/v1alpha3"
	istiosecurity "istio.io/client-go/pkg/apis/security/v1"
	istiooperator "istio.io/istio/operator/pkg/apis"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	kustomize "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/halt-envoy/halt-envoy/internal/config"

	"github.com/halt-envoy/halt-envoy/internal/testutil/strictyaml"
)

// index finds decoded manifests by kind and name.
type index map[string]manifest

func newIndex(t *testing.T, ms []manifest) index {
	t.Helper()
	ix := index{}
	for _, m := range ms {
		key := m.kind() + "/" + m.name()
		if m.name() == "" {
			t.Errorf("%s: no metadata.name", m)
		}
		if prev, dup := ix[key]; dup {
			t.Errorf("%s: defined twice (also %s)", m, prev.file)
		}
		ix[key] = m
	}
	return ix
}

// get returns the object of type T named name.
func get[T any](t *testing.T, ix index, name string) T {
	t.Helper()
	for _, m := range ix {
		if o, ok := m.obj.(T); ok && m.name() == name {
			return o
		}
	}
	var zero T
	t.Fatalf("no %T named %q", zero, name)
	return zero
}

// all returns every object of type T, by name.
func all[T any](ix index) []T {
	var names []string
	for k, m := range ix {
		if _, ok := m.obj.(T); ok {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	var out []T
	for _, k := range names {
		out = append(out, ix[k].obj.(T))
	}
	return out
}

// labelsMatch reports whether every selector label is among labels.
func labelsMatch(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// clusterScoped are the kinds without a namespace.
var clusterScoped = map[string]bool{"Namespace": true, "Kustomization": true}

func TestKubernetesManifests(t *testing.T) {
	ms := loadManifests(t, "deploy/kubernetes", "examples/istio")
	ix := newIndex(t, ms)
	for _, m := range ms {
		if !clusterScoped[m.kind()] && m.ns() == "" {
			t.Errorf("%s: no metadata.namespace", m)
		}
	}

	// kustomize builds exactly the manifests of deploy/kubernetes (what kubectl apply -k
	// applies), each into the namespace.
	ns := get[*corev1.Namespace](t, ix, "halt-system").Name
	built := kustomizeBuild(t, "deploy/kubernetes")
	want := map[string]bool{}
	for _, m := range ms {
		if strings.HasPrefix(m.file, "deploy/kubernetes/") && m.kind() != "Kustomization" {
			want[m.kind()+"/"+m.name()] = true
			if !clusterScoped[m.kind()] && m.ns() != ns {
				t.Errorf("%s: namespace %q, want %q", m, m.ns(), ns)
			}
		}
	}
	for _, m := range built {
		if !want[m.kind()+"/"+m.name()] {
			t.Errorf("kustomize builds %s, which no file of deploy/kubernetes holds", m)
		}
		delete(want, m.kind()+"/"+m.name())
		if !clusterScoped[m.kind()] && m.ns() != ns {
			t.Errorf("kustomize builds %s into namespace %q, want %q", m, m.ns(), ns)
		}
	}
	for k := range want {
		t.Errorf("%s is not in kustomization.yaml's resources", k)
	}
	kust := get[*kustomize.Kustomization](t, ix, "halt-envoy")
	if kust.Namespace != ns {
		t.Errorf("kustomization.yaml namespace %q, want %q", kust.Namespace, ns)
	}

	h := checkHalt(t, ix, "halt-envoy")
	if h.deployment.Spec.Replicas == nil || *h.deployment.Spec.Replicas != 2 {
		t.Errorf("Deployment replicas = %v, want 2", h.deployment.Spec.Replicas)
	}

	// Istio.
	t.Run("EnvoyFilter", func(t *testing.T) {
		istioRateLimit(t, get[*istionetworking.EnvoyFilter](t, ix, "halt-envoy-ratelimit"), h.set,
			fmt.Sprintf("outbound|%d||%s", h.grpcPort, h.fqdn))
	})
	t.Run("ext_authz", func(t *testing.T) {
		ap := get[*istiosecurity.AuthorizationPolicy](t, ix, "halt-envoy-ext-authz")
		if ap.Spec.GetAction() != securityapi.AuthorizationPolicy_CUSTOM {
			t.Error("AuthorizationPolicy action must be CUSTOM")
		}
		provider := ap.Spec.GetProvider().GetName()
		var found bool
		for _, op := range all[*istiooperator.IstioOperator](ix) {
			mesh := &meshv1alpha1.MeshConfig{}
			if err := protojson.Unmarshal(op.Spec.MeshConfig, mesh); err != nil {
				t.Fatalf("IstioOperator %s: meshConfig: %v", op.Name, err)
			}
			for _, p := range mesh.GetExtensionProviders() {
				if p.GetName() != provider {
					continue
				}
				found = true
				g := p.GetEnvoyExtAuthzGrpc()
				if g.GetService() != h.fqdn || int(g.GetPort()) != h.grpcPort {
					t.Errorf("provider %s points at %s:%d, want %s:%d", provider, g.GetService(), g.GetPort(), h.fqdn, h.grpcPort)
				}
				if g.GetTimeout() == nil {
					t.Errorf("provider %s: set a timeout (Istio's default is 600s)", provider)
				}
			}
		}
		if !found {
			t.Errorf("AuthorizationPolicy provider %q is not an extensionProvider of mesh-config.yaml", provider)
		}
		ef := get[*istionetworking.EnvoyFilter](t, ix, "halt-envoy-ratelimit")
		if fmt.Sprint(ap.Spec.GetSelector().GetMatchLabels()) != fmt.Sprint(ef.Spec.GetWorkloadSelector().GetLabels()) {
			t.Error("AuthorizationPolicy and EnvoyFilter select different workloads")
		}
	})
}

// TestManifestsRefuseMisspeltFields renames every field of every manifest, one at a
// time, and wants the strict decoding to refuse each with the field's name.
func TestManifestsRefuseMisspeltFields(t *testing.T) {
	for _, f := range manifestFiles(t, "deploy/kubernetes", "examples/istio") {
		docs, err := strictyaml.Split(mustRead(t, repo(f)))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range docs {
			strictyaml.Misspell(t, f, doc, func(b []byte) error { _, err := decodeManifest(b); return err })
		}
	}
}

// kustomizeBuild runs kustomize (the library kubectl apply -k uses) on a repository
// directory and decodes what it builds.
func kustomizeBuild(t *testing.T, dir string) []manifest {
	t.Helper()
	abs, err := filepath.Abs(repo(dir))
	if err != nil {
		t.Fatal(err)
	}
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), abs)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	y, err := res.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return decodeFile(t, "kustomize build "+dir, y)
}

// haltDeployment is what checkHalt found out about one installation of halt.
type haltDeployment struct {
	deployment *appsv1.Deployment
	service    *corev1.Service
	set        *config.Set // the ConfigMap's configuration (nil when the config comes over xDS)
	fqdn       string      // the Service's cluster DNS name
	grpcPort   int
	httpPort   int
}

// checkHalt cross-checks one installation of halt (a Deployment, its Service, Secrets,
// ConfigMap, HorizontalPodAutoscaler, PodDisruptionBudget and ServiceMonitor, all named
// name): the plain manifests and every rendering of the Helm chart go through it.
func checkHalt(t *testing.T, ix index, name string) haltDeployment {
	t.Helper()
	dep := get[*appsv1.Deployment](t, ix, name)
	pod := dep.Spec.Template
	if dep.Spec.Selector == nil || !labelsMatch(dep.Spec.Selector.MatchLabels, pod.Labels) {
		t.Error("Deployment selector does not match its pod labels")
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		if _, dup := env[e.Name]; dup {
			t.Errorf("env %s set twice", e.Name)
		}
		env[e.Name] = e
	}
	checkHaltEnv(t, env)
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = int(p.ContainerPort)
	}
	resolve := func(p intstr.IntOrString) int {
		if p.Type == intstr.String {
			if n, ok := ports[p.StrVal]; ok {
				return n
			}
			t.Errorf("port name %q is not a container port (%v)", p.StrVal, ports)
			return -1
		}
		return p.IntValue()
	}
	h := haltDeployment{deployment: dep}
	h.httpPort = port(t, "HALT_HTTP_ADDR", env["HALT_HTTP_ADDR"].Value)
	h.grpcPort = port(t, "HALT_GRPC_ADDR", env["HALT_GRPC_ADDR"].Value)
	if ports["http"] != h.httpPort || ports["grpc"] != h.grpcPort {
		t.Errorf("container ports %v disagree with HALT_HTTP_ADDR/HALT_GRPC_ADDR (%d, %d)", ports, h.httpPort, h.grpcPort)
	}
	for probe, want := range map[string]struct {
		p    *corev1.Probe
		path string
	}{"readinessProbe": {c.ReadinessProbe, "/readyz"}, "livenessProbe": {c.LivenessProbe, "/healthz"}} {
		if want.p == nil || want.p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe", probe)
			continue
		}
		if got := want.p.HTTPGet.Path; got != want.path {
			t.Errorf("%s path %q, want %q", probe, got, want.path)
		}
		if got := resolve(want.p.HTTPGet.Port); got != h.httpPort {
			t.Errorf("%s port %d, want halt's HTTP port %d", probe, got, h.httpPort)
		}
	}
	for _, r := range []struct {
		list corev1.ResourceList
		name corev1.ResourceName
		what string
	}{{c.Resources.Requests, corev1.ResourceCPU, "requests.cpu"}, {c.Resources.Requests, corev1.ResourceMemory, "requests.memory"},
		{c.Resources.Limits, corev1.ResourceMemory, "limits.memory"}} {
		if _, ok := r.list[r.name]; !ok {
			t.Errorf("container resources lack %s", r.what)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || fmt.Sprint(sc.Capabilities.Drop) != "[ALL]" {
		t.Errorf("container securityContext %v: want readOnlyRootFilesystem, no privilege escalation, drop ALL", sc)
	}
	nonRoot := func(b *bool) bool { return b != nil && *b }
	if !(pod.Spec.SecurityContext != nil && nonRoot(pod.Spec.SecurityContext.RunAsNonRoot)) && !(sc != nil && nonRoot(sc.RunAsNonRoot)) {
		t.Error("pod must run as non-root")
	}

	// Secrets: the store URL (and the admin token, when set) come from Secrets that
	// exist and hold the key.
	secretKey := func(v string, required bool) {
		e, ok := env[v]
		if !ok {
			if required {
				t.Errorf("no %s in the container's environment", v)
			}
			return
		}
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("%s must come from a Secret (secretKeyRef)", v)
			return
		}
		ref := e.ValueFrom.SecretKeyRef
		sec := get[*corev1.Secret](t, ix, ref.Name)
		if _, ok := sec.StringData[ref.Key]; !ok {
			if _, ok := sec.Data[ref.Key]; !ok {
				t.Errorf("Secret %s has no key %q (read by %s)", sec.Name, ref.Key, v)
			}
		}
	}
	secretKey("HALT_STORE", true)
	secretKey("HALT_ADMIN_TOKEN", false)

	// The config: a ConfigMap volume mounted as a directory where HALT_CONFIG points.
	if cfg, ok := env["HALT_CONFIG"]; ok && cfg.Value != "" {
		var cmName string
		for _, m := range c.VolumeMounts {
			if m.MountPath != cfg.Value {
				continue
			}
			if m.SubPath != "" {
				t.Error("the config volume must not use subPath: subPath mounts never see ConfigMap updates")
			}
			for _, v := range pod.Spec.Volumes {
				if v.Name == m.Name && v.ConfigMap != nil {
					cmName = v.ConfigMap.Name
				}
			}
		}
		if cmName == "" {
			t.Fatalf("no ConfigMap volume mounted at HALT_CONFIG %q", cfg.Value)
		}
		h.set = configMapSet(t, get[*corev1.ConfigMap](t, ix, cmName))
	} else if env["CONFIG_TYPE"].Value != "GRPC_XDS_SOTW" || env["CONFIG_GRPC_XDS_SERVER_URL"].Value == "" {
		t.Error("no configuration: want HALT_CONFIG (a ConfigMap) or CONFIG_TYPE=GRPC_XDS_SOTW with CONFIG_GRPC_XDS_SERVER_URL")
	}

	// Service.
	svc := get[*corev1.Service](t, ix, name)
	h.service = svc
	if !labelsMatch(svc.Spec.Selector, pod.Labels) {
		t.Error("Service selector does not match the Deployment's pod labels")
	}
	svcPorts := map[string]int{}
	for _, p := range svc.Spec.Ports {
		svcPorts[p.Name] = int(p.Port)
		if got, want := resolve(p.TargetPort), ports[p.Name]; got != want {
			t.Errorf("Service port %s targets %d, want container port %d", p.Name, got, want)
		}
		if p.Name == "grpc" && (p.AppProtocol == nil || *p.AppProtocol != "grpc") {
			t.Error("the grpc Service port needs appProtocol: grpc (Istio must speak HTTP/2 to it)")
		}
	}
	if svcPorts["grpc"] != h.grpcPort || svcPorts["http"] != h.httpPort {
		t.Errorf("Service ports %v, want grpc %d and http %d", svcPorts, h.grpcPort, h.httpPort)
	}
	h.fqdn = fmt.Sprintf("%s.%s.svc.cluster.local", svc.Name, svc.Namespace)

	// HPA, PDB, ServiceMonitor.
	hpa := get[*autoscalingv2.HorizontalPodAutoscaler](t, ix, name)
	if hpa.Spec.ScaleTargetRef.Kind != "Deployment" || hpa.Spec.ScaleTargetRef.Name != dep.Name {
		t.Error("HPA must scale the Deployment")
	}
	if len(hpa.Spec.Metrics) == 0 || hpa.Spec.Metrics[0].Resource == nil || hpa.Spec.Metrics[0].Resource.Name != corev1.ResourceCPU {
		t.Error("HPA should scale on CPU")
	}
	minReplicas := 1
	if hpa.Spec.MinReplicas != nil {
		minReplicas = int(*hpa.Spec.MinReplicas)
	}
	if minReplicas < 2 {
		t.Error("HPA minReplicas < 2")
	}
	if r := dep.Spec.Replicas; r != nil && int(*r) != minReplicas {
		t.Errorf("Deployment replicas %d, HPA minReplicas %d: the HPA owns the count; start at its floor", *r, minReplicas)
	}
	pdb := get[*policyv1.PodDisruptionBudget](t, ix, name)
	if pdb.Spec.Selector == nil || !labelsMatch(pdb.Spec.Selector.MatchLabels, pod.Labels) {
		t.Error("PodDisruptionBudget selector does not match the pods")
	}
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.Type != intstr.Int || pdb.Spec.MinAvailable.IntValue() >= minReplicas {
		t.Error("PodDisruptionBudget minAvailable must be a number below the minimum replica count, or nodes never drain")
	}
	smon := get[*monitoringv1.ServiceMonitor](t, ix, name)
	if !labelsMatch(smon.Spec.Selector.MatchLabels, svc.Labels) {
		t.Error("ServiceMonitor selector does not match the Service's labels")
	}
	if len(smon.Spec.Endpoints) == 0 {
		t.Fatal("ServiceMonitor has no endpoint")
	}
	if p := smon.Spec.Endpoints[0].Port; svcPorts[p] != h.httpPort {
		t.Errorf("ServiceMonitor scrapes port %q, want the Service's http port", p)
	}
	// The alert rules and the dashboard select job="halt-envoy": the job is the value of
	// the Service's jobLabel label, or else the Service's name.
	job := svc.Name
	if smon.Spec.JobLabel != "" {
		job = svc.Labels[smon.Spec.JobLabel]
	}
	if job != "halt-envoy" {
		t.Errorf("ServiceMonitor gives the job label %q; alerts.yaml and the dashboard select job=\"halt-envoy\"", job)
	}
	if smon.Spec.Endpoints[0].Path != "/metrics" {
		t.Error("ServiceMonitor path must be /metrics")
	}
	if smon.Namespace != svc.Namespace && !contains(smon.Spec.NamespaceSelector.MatchNames, svc.Namespace) {
		t.Error("ServiceMonitor namespaceSelector misses the Service's namespace")
	}
	return h
}

// checkHaltEnv wants every HALT_ variable of a manifest to be a flag of halt-envoy serve:
// halt ignores unknown variables, so a misspelt one would be a silent default.
func checkHaltEnv(t *testing.T, env map[string]corev1.EnvVar) {
	t.Helper()
	out, err := exec.Command(haltBinary(t), "serve", "-h").CombinedOutput()
	if len(out) == 0 {
		t.Fatalf("halt-envoy serve -h: %v", err)
	}
	for name := range env {
		flag, ok := strings.CutPrefix(name, "HALT_")
		if !ok {
			continue
		}
		flag = "-" + strings.ReplaceAll(strings.ToLower(flag), "_", "-")
		if !strings.Contains(string(out), "  "+flag+" ") && !strings.Contains(string(out), "  "+flag+"\n") {
			t.Errorf("env %s: halt-envoy serve has no flag %s", name, flag)
		}
	}
}

// configMapSet validates the halt configuration embedded in a ConfigMap, as halt would
// load the mounted directory.
func configMapSet(t *testing.T, cm *corev1.ConfigMap) *config.Set {
	t.Helper()
	files := map[string][]byte{}
	for k, v := range cm.Data {
		if filepath.Ext(k) == ".yaml" || filepath.Ext(k) == ".yml" {
			files[k] = []byte(v)
		}
	}
	if len(files) == 0 {
		t.Fatalf("ConfigMap %s holds no *.yaml key", cm.Name)
	}
	set, err := config.Parse(files)
	if err != nil {
		t.Fatalf("ConfigMap %s: the embedded config does not load: %v", cm.Name, err)
	}
	return set
}

func istioRateLimit(t *testing.T, ef *istionetworking.EnvoyFilter, set *config.Set, wantCluster string) {
	var rl *ratelimitv3.RateLimit
	var vh *routev3.VirtualHost
	for i, p := range ef.Spec.GetConfigPatches() {
		where := fmt.Sprintf("configPatches[%d]", i)
		value, err := envoyPatch(p.GetApplyTo().String(), p.GetPatch().GetValue())
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		switch v := value.(type) {
		case *hcmv3.HttpFilter:
			if p.GetPatch().GetOperation() != networkingapi.EnvoyFilter_Patch_INSERT_BEFORE ||
				p.GetMatch().GetListener().GetFilterChain().GetFilter().GetSubFilter().GetName() != "envoy.filters.http.router" {
				t.Errorf("%s: the rate-limit filter must be inserted before the router", where)
			}
			validateDeep(t, where, v)
			if v.GetName() != "envoy.filters.http.ratelimit" {
				t.Errorf("%s: filter %q", where, v.GetName())
				continue
			}
			rl = &ratelimitv3.RateLimit{}
			if err := v.GetTypedConfig().UnmarshalTo(rl); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
		case *routev3.VirtualHost:
			if p.GetPatch().GetOperation() != networkingapi.EnvoyFilter_Patch_MERGE {
				t.Errorf("%s: rate_limits must be MERGEd into the virtual host", where)
			}
			vh = v
			// A partial VirtualHost (no name/domains): validate what it carries.
			for j, r := range vh.GetRateLimits() {
				validateDeep(t, fmt.Sprintf("%s rate_limits[%d]", where, j), r)
			}
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
