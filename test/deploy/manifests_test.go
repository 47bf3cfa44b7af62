package deploy_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	istionetworking "istio.io/client-go/pkg/apis/networking/v1alpha3"
	istiosecurity "istio.io/client-go/pkg/apis/security/v1"
	istiooperator "istio.io/istio/operator/pkg/apis"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kustomize "sigs.k8s.io/kustomize/api/types"

	"github.com/halt-envoy/halt-envoy/internal/testutil/strictyaml"
)

// kinds are the resource types the deployment material may hold, each decoded into the
// Go type of the project that defines it. A kind missing here is refused: add its
// library's type, never a map.
var kinds = map[schema.GroupVersionKind]func() any{
	{Version: "v1", Kind: "Namespace"}:                                            func() any { return &corev1.Namespace{} },
	{Version: "v1", Kind: "ConfigMap"}:                                            func() any { return &corev1.ConfigMap{} },
	{Version: "v1", Kind: "Secret"}:                                               func() any { return &corev1.Secret{} },
	{Version: "v1", Kind: "Service"}:                                              func() any { return &corev1.Service{} },
	{Version: "v1", Kind: "ServiceAccount"}:                                       func() any { return &corev1.ServiceAccount{} },
	{Group: "apps", Version: "v1", Kind: "Deployment"}:                            func() any { return &appsv1.Deployment{} },
	{Group: "autoscaling", Version: "v2", Kind: "HorizontalPodAutoscaler"}:        func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
	{Group: "policy", Version: "v1", Kind: "PodDisruptionBudget"}:                 func() any { return &policyv1.PodDisruptionBudget{} },
	{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"}:       func() any { return &monitoringv1.ServiceMonitor{} },
	{Group: "kustomize.config.k8s.io", Version: "v1beta1", Kind: "Kustomization"}: func() any { return &kustomize.Kustomization{} },
	{Group: "networking.istio.io", Version: "v1alpha3", Kind: "EnvoyFilter"}:      func() any { return &istionetworking.EnvoyFilter{} },
	{Group: "security.istio.io", Version: "v1", Kind: "AuthorizationPolicy"}:      func() any { return &istiosecurity.AuthorizationPolicy{} },
	{Group: "install.istio.io", Version: "v1alpha1", Kind: "IstioOperator"}:       func() any { return &istiooperator.IstioOperator{} },
}

// manifest is one decoded resource and where it came from.
type manifest struct {
	file string // repository-relative path, or "helm:TEMPLATE" for a rendered chart
	gvk  schema.GroupVersionKind
	obj  any // a pointer to the resource's Go type (kinds)
	raw  []byte
}

func (m manifest) kind() string { return m.gvk.Kind }

func (m manifest) meta() metav1.Object {
	if o, ok := m.obj.(metav1.Object); ok {
		return o
	}
	return &metav1.ObjectMeta{}
}

func (m manifest) name() string {
	if k, ok := m.obj.(*kustomize.Kustomization); ok {
		if k.MetaData == nil {
			return ""
		}
		return k.MetaData.Name
	}
	return m.meta().GetName()
}

func (m manifest) ns() string { return m.meta().GetNamespace() }

func (m manifest) String() string {
	return fmt.Sprintf("%s %s/%s (%s)", m.kind(), m.ns(), m.name(), m.file)
}

// decodeManifest decodes one YAML document into the Go type of its kind, refusing
// unknown and duplicate fields (sigs.k8s.io/json's strict mode: the error names the
// field's path) and, for resources whose spec is a protobuf message (Istio), decoding
// that spec again with protojson, which refuses unknown fields too. Every error names
// the kind and the object's name; callers prefix the file.
func decodeManifest(doc []byte) (manifest, error) {
	j, err := strictyaml.ToJSON(doc)
	if err != nil {
		return manifest{}, err
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(j, &tm); err != nil {
		return manifest{}, err
	}
	gvk := schema.FromAPIVersionAndKind(tm.APIVersion, tm.Kind)
	if tm.APIVersion == "" || tm.Kind == "" {
		var top map[string]json.RawMessage
		json.Unmarshal(j, &top)
		keys := make([]string, 0, len(top))
		for k := range top {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return manifest{}, fmt.Errorf("apiVersion and kind are required (the document has %v)", keys)
	}
	newObj, ok := kinds[gvk]
	if !ok {
		return manifest{}, fmt.Errorf("%s %s: a kind the tests do not know; add its Go type to kinds", tm.APIVersion, tm.Kind)
	}
	m := manifest{gvk: gvk, obj: newObj(), raw: j}
	if err := strictyaml.DecodeJSON(j, m.obj); err != nil {
		return m, fmt.Errorf("%s %s: %v", gvk.Kind, m.name(), err)
	}
	if err := decodeProtoParts(m); err != nil {
		return m, fmt.Errorf("%s %s: %v", gvk.Kind, m.name(), err)
	}
	if err := checkResourceNames(m); err != nil {
		return m, fmt.Errorf("%s %s: %v", gvk.Kind, m.name(), err)
	}
	return m, nil
}

// checkResourceNames refuses container resources the API server would refuse: a
// ResourceList is a map, so a misspelt "cpu" decodes as a resource of its own. Valid
// are the standard names and extended resources (a domain-qualified name).
func checkResourceNames(m manifest) error {
	d, ok := m.obj.(*appsv1.Deployment)
	if !ok {
		return nil
	}
	spec := d.Spec.Template.Spec
	var errs []error
	for i, c := range append(append([]corev1.Container(nil), spec.InitContainers...), spec.Containers...) {
		for what, l := range map[string]corev1.ResourceList{"requests": c.Resources.Requests, "limits": c.Resources.Limits} {
			for name := range l {
				switch {
				case name == corev1.ResourceCPU, name == corev1.ResourceMemory, name == corev1.ResourceEphemeralStorage,
					strings.HasPrefix(string(name), corev1.ResourceHugePagesPrefix), strings.Contains(string(name), "/"):
				default:
					errs = append(errs, fmt.Errorf("container %d (%s): resources.%s: unknown resource %q", i, c.Name, what, name))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// strictProto decodes JSON into a protobuf message, refusing unknown fields.
func strictProto(what string, j []byte, m proto.Message) error {
	if err := protojson.Unmarshal(j, m); err != nil {
		return fmt.Errorf("%s: %v", what, err)
	}
	return nil
}

// decodeProtoParts checks the parts of a resource its Go type accepts loosely: Istio's
// specs (their UnmarshalJSON allows unknown fields), the IstioOperator's meshConfig (raw
// JSON) and the Envoy configuration inside an EnvoyFilter patch (a Struct).
func decodeProtoParts(m manifest) error {
	var raw struct {
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(m.raw, &raw); err != nil {
		return err
	}
	switch o := m.obj.(type) {
	case *istionetworking.EnvoyFilter:
		if err := strictProto("spec", raw.Spec, &o.Spec); err != nil {
			return err
		}
		for i, p := range o.Spec.GetConfigPatches() {
			if _, err := envoyPatch(p.GetApplyTo().String(), p.GetPatch().GetValue()); err != nil {
				return fmt.Errorf("spec.configPatches[%d].patch.value: %v", i, err)
			}
		}
	case *istiosecurity.AuthorizationPolicy:
		return strictProto("spec", raw.Spec, &o.Spec)
	case *istiooperator.IstioOperator:
		if len(o.Spec.MeshConfig) > 0 {
			return strictProto("spec.meshConfig", o.Spec.MeshConfig, &meshv1alpha1.MeshConfig{})
		}
	}
	return nil
}

// envoyPatch decodes an EnvoyFilter patch value into the go-control-plane message its
// applyTo names (Envoy's own field names, unknown ones refused).
func envoyPatch(applyTo string, value proto.Message) (proto.Message, error) {
	var m proto.Message
	switch applyTo {
	case "HTTP_FILTER":
		m = &hcmv3.HttpFilter{}
	case "VIRTUAL_HOST":
		m = &routev3.VirtualHost{}
	default:
		return nil, fmt.Errorf("applyTo %s: no go-control-plane type mapped in the tests", applyTo)
	}
	j, err := protojson.Marshal(value)
	if err != nil {
		return nil, err
	}
	if err := protojson.Unmarshal(j, m); err != nil {
		return nil, fmt.Errorf("not a valid %s: %v", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return m, nil
}

// decodeFile decodes every document of a YAML file strictly.
func decodeFile(t *testing.T, name string, b []byte) []manifest {
	t.Helper()
	docs, err := strictyaml.Split(b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var out []manifest
	for i, doc := range docs {
		m, err := decodeManifest(doc)
		if err != nil {
			t.Errorf("%s (document %d): %v", name, i+1, err)
			continue
		}
		m.file = name
		out = append(out, m)
	}
	return out
}

// manifestFiles lists the YAML files under the given repository directories.
func manifestFiles(t *testing.T, dirs ...string) []string {
	t.Helper()
	var out []string
	for _, dir := range dirs {
		err := filepath.WalkDir(repo(dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && (filepath.Ext(path) == ".yaml" || filepath.Ext(path) == ".yml") {
				out = append(out, strings.TrimPrefix(path, root+"/"))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	sort.Strings(out)
	return out
}

// loadManifests decodes every YAML file under the given repository directories.
func loadManifests(t *testing.T, dirs ...string) []manifest {
	t.Helper()
	var out []manifest
	for _, f := range manifestFiles(t, dirs...) {
		out = append(out, decodeFile(t, f, mustRead(t, repo(f)))...)
	}
	return out
}
