// Package deploy_test checks the deployment material (examples/envoy, examples/istio,
// deploy/, docker-compose.yaml, Dockerfile) against the code: Envoy configs load into
// go-control-plane's protos and validate, every cross-reference between files agrees,
// every PromQL expression names metrics halt exports, and a real Prometheus can scrape
// halt and answer the dashboard's queries. Neither Envoy nor Docker runs here.
package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"gopkg.in/yaml.v3"

	"github.com/halt-envoy/halt-envoy/pkg/plans"
)

// root is the repository, relative to this package's directory (go test's working dir).
const root = "../.."

func repo(parts ...string) string { return filepath.Join(append([]string{root}, parts...)...) }

var tmpRoot string

func TestMain(m *testing.M) {
	code := m.Run()
	if tmpRoot != "" {
		os.RemoveAll(tmpRoot)
	}
	os.Exit(code)
}

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
func repoConfig(t *testing.T) *plans.Set {
	t.Helper()
	set, err := plans.Load(repo("config"))
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

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// haltBinary builds cmd/halt-envoy once per test run.
func haltBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if tmpRoot == "" {
			tmpRoot, buildErr = os.MkdirTemp("", "halt-deploy-test-")
			if buildErr != nil {
				return
			}
		}
		buildPath = filepath.Join(tmpRoot, "halt-envoy")
		cmd := exec.Command(goTool(), "build", "-o", buildPath, "-ldflags", "-X main.version=deploy-test", "./cmd/halt-envoy")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/halt-envoy: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// goTool is the go command: on PATH, else the toolchain running this test.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// freePort returns a loopback port nobody listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type halt struct {
	grpcAddr, httpAddr string
	log                *lockedBuffer
}

// startHalt runs halt-envoy with the memory store on free loopback ports and waits until
// /readyz answers 200. It is stopped (SIGTERM, then killed) when the test ends.
func startHalt(t *testing.T, configPath string) *halt {
	t.Helper()
	bin := haltBinary(t)
	h := &halt{
		grpcAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		httpAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		log:      &lockedBuffer{},
	}
	cmd := exec.Command(bin, "serve", "--config", configPath, "--store", "memory://",
		"--grpc-addr", h.grpcAddr, "--http-addr", h.httpAddr, "--log-level", "debug")
	cmd.Env = os.Environ()
	cmd.Stdout, cmd.Stderr = h.log, h.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("halt-envoy log:\n%s", h.log.String())
		}
	})
	waitHTTP(t, "http://"+h.httpAddr+"/readyz", done, 15*time.Second)
	return h
}

// waitHTTP polls url until it answers 200; exited closes when the process died.
func waitHTTP(t *testing.T, url string, exited <-chan struct{}, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-exited:
			t.Fatalf("process exited before %s answered", url)
		case <-ctx.Done():
			t.Fatalf("%s did not answer 200 within %v (last error: %v)", url, within, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
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

// lockedBuffer collects a child process's output safely.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
