// Package deploy_test checks the deployment material (examples/envoy, examples/istio,
// deploy/, docker-compose.yaml, Dockerfile) against the code with the field's own
// libraries: Envoy configs load into go-control-plane's protos and validate, Kubernetes
// and Istio manifests decode strictly into k8s.io/api and Istio's types, every
// cross-reference between files agrees, every PromQL expression parses with Prometheus's
// parser and names metrics and labels halt exports, and a real Prometheus can scrape halt
// and answer the dashboard's queries. Neither Envoy nor Docker runs here.
package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"gopkg.in/yaml.v3"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// root is the repository, relative to this package's directory (go test's working dir).
const root = "../.."

func repo(parts ...string) string { return filepath.Join(append([]string{root}, parts...)...) }

// TestMain removes the binary built for the run.
func TestMain(m *testing.M) { testutil.Main(m) }

// yamlDocs reads every document of a (multi-document) YAML file as generic values.
func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	return docs
}

func yamlDoc(t *testing.T, path string) map[string]any {
	t.Helper()
	docs := yamlDocs(t, path)
	if len(docs) != 1 {
		t.Fatalf("%s: want exactly one YAML document, got %d", path, len(docs))
	}
	return docs[0]
}

// dig walks nested maps and lists: dig(v, "spec", "template", 0, "name").
func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, path ...any) string {
	s, _ := dig(v, path...).(string)
	return s
}

func list(v any, path ...any) []any {
	l, _ := dig(v, path...).([]any)
	return l
}

// validateDeep runs the protoc-gen-validate rules of m and of every message packed in a
// google.protobuf.Any below it (PGV does not look inside Any: typed_config and
// typed_extension_protocol_options would go unchecked otherwise). It fails when an Any
// holds a type that is not registered, i.e. an extension the test forgot to import.
func validateDeep(t *testing.T, where string, m proto.Message) {
	t.Helper()
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			t.Errorf("%s: %v", where, err)
		}
	}
	var walk func(path string, msg protoreflect.Message)
	walk = func(path string, msg protoreflect.Message) {
		if msg.Descriptor().FullName() == "google.protobuf.Any" {
			a := msg.Interface().(*anypb.Any)
			inner, err := a.UnmarshalNew()
			if err != nil {
				t.Errorf("%s %s: cannot unpack %s: %v", where, path, a.GetTypeUrl(), err)
				return
			}
			validateDeep(t, where+" "+path+" ("+a.GetTypeUrl()+")", inner)
			return
		}
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			p := path + "." + string(fd.Name())
			switch {
			case fd.IsList() && fd.Message() != nil:
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					walk(fmt.Sprintf("%s[%d]", p, i), l.Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(fmt.Sprintf("%s[%v]", p, k.Interface()), mv.Message())
					return true
				})
			case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
				walk(p, v.Message())
			}
			return true
		})
	}
	walk("", m.ProtoReflect())
}

// repoConfig loads the halt configuration directory the demo uses.
func repoConfig(t *testing.T) *config.Set {
	t.Helper()
	set, err := config.Load(repo("config"))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return set
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// ---- a real halt-envoy process ----

// haltBinary builds cmd/halt-envoy (version deploy-test) once per test run.
func haltBinary(t *testing.T) string {
	t.Helper()
	return testutil.BinaryVersion(t, "deploy-test")
}

type halt struct{ *testutil.Process }

// startHalt runs halt-envoy with the memory store on free loopback ports and waits until
// /readyz answers 200. It is stopped (SIGINT, then killed) when the test ends. Its
// decision clock starts at testutil.ClockStart, so that a loop of calls against a minute's
// limit (the demo's) does not straddle the minute's edge.
func startHalt(t *testing.T, configPath string) *halt {
	t.Helper()
	return &halt{testutil.StartHalt(t, testutil.HaltOptions{
		Binary:       haltBinary(t),
		Command:      "serve",
		LogLevel:     "debug",
		Args:         []string{"--config", configPath, "--store", "memory://"},
		Env:          append(os.Environ(), testutil.ClockEnv(0)),
		ReadyTimeout: 15 * time.Second,
		StopSignal:   os.Interrupt,
		StopTimeout:  10 * time.Second,
	})}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return string(b)
}

// httpClient bounds every request the tests make.
var httpClient = &http.Client{Timeout: 10 * time.Second}
