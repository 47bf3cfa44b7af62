package envoygateway_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rlsconf "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"

	"github.com/halt-envoy/halt-envoy/internal/refenv"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/internal/testutil/strictyaml"
	"github.com/halt-envoy/halt-envoy/internal/xds/xdstest"
)

// egTestdata is Envoy Gateway's rate-limit test data, in the module this test builds with.
func egTestdata(t *testing.T, parts ...string) string {
	t.Helper()
	out, err := exec.Command(testutil.GoTool(), "list", "-m", "-f", "{{.Dir}}", "github.com/envoyproxy/gateway").Output()
	if err != nil {
		t.Fatalf("go list -m github.com/envoyproxy/gateway: %v", err)
	}
	return filepath.Join(append([]string{strings.TrimSpace(string(out)), "internal", "infrastructure", "kubernetes", "ratelimit", "testdata"}, parts...)...)
}

// egDeployment is the envoy-ratelimit Deployment Envoy Gateway generates with its
// defaults (the Prometheus exporter on): Envoy Gateway's own golden file.
func egDeployment(t *testing.T) *appsv1.Deployment {
	t.Helper()
	path := egTestdata(t, "deployments", "default.yaml")
	dep := &appsv1.Deployment{}
	if err := strictyaml.Decode(mustRead(t, path), dep); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return dep
}

// egStatsdMapping is the statsd_exporter mapping Envoy Gateway mounts at
// /etc/statsd-exporter/conf.yaml (its ConfigMap statsd-exporter-config).
func egStatsdMapping(t *testing.T) string {
	t.Helper()
	path := egTestdata(t, "envoy-ratelimit-configmap.yaml")
	cm := &corev1.ConfigMap{}
	if err := strictyaml.Decode(mustRead(t, path), cm); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if cm.Data["conf.yaml"] == "" {
		t.Fatalf("%s: no conf.yaml", path)
	}
	return cm.Data["conf.yaml"]
}

// applyRateLimitDeployment applies the EnvoyGateway's rateLimitDeployment settings the
// way Envoy Gateway does when it builds the Deployment: the container's image, resources
// and env (an entry replaces the one of the same name, or is added), the replica count,
// then the patch (a strategic merge, with Kubernetes' strategicpatch).
func applyRateLimitDeployment(t *testing.T, dep *appsv1.Deployment, spec *egv1a1.KubernetesDeploymentSpec) *appsv1.Deployment {
	t.Helper()
	c := &dep.Spec.Template.Spec.Containers[0]
	if cs := spec.Container; cs != nil {
		if cs.Image != nil {
			c.Image = *cs.Image
		}
		if cs.Resources != nil {
			c.Resources = *cs.Resources
		}
		for _, e := range cs.Env {
			i := slices.IndexFunc(c.Env, func(x corev1.EnvVar) bool { return x.Name == e.Name })
			if i >= 0 {
				c.Env[i] = e
			} else {
				c.Env = append(c.Env, e)
			}
		}
	}
	if spec.Replicas != nil {
		dep.Spec.Replicas = spec.Replicas
	}
	if spec.Patch == nil {
		return dep
	}
	if spec.Patch.Type != nil && *spec.Patch.Type != egv1a1.StrategicMerge {
		t.Fatalf("patch type %s: the test applies StrategicMerge only", *spec.Patch.Type)
	}
	orig, err := json.Marshal(dep)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := strategicpatch.StrategicMergePatch(orig, spec.Patch.Value.Raw, appsv1.Deployment{})
	if err != nil {
		t.Fatalf("rateLimitDeployment.patch: %v", err)
	}
	out := &appsv1.Deployment{}
	if err := strictyaml.DecodeJSON(patched, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// image is what the Dockerfile says of the image: ENTRYPOINT, CMD, ENV, and the paths of
// halt's binary (its COPY destination and the symlinks the build stage makes in /out/bin,
// copied to /bin).
type image struct {
	entrypoint, cmd []string
	env             map[string]string
	executables     []string
}

// dockerfile reads the image's ENTRYPOINT, CMD, ENV and executables from the Dockerfile.
func dockerfile(t *testing.T) image {
	t.Helper()
	img := image{env: map[string]string{}}
	link := regexp.MustCompile(`ln -s /usr/local/bin/halt-envoy /out/bin/(\S+)`)
	for _, l := range strings.Split(string(mustRead(t, repo("Dockerfile"))), "\n") {
		inst, rest, _ := strings.Cut(strings.TrimSpace(l), " ")
		switch inst {
		case "ENTRYPOINT", "CMD":
			var v []string
			if err := json.Unmarshal([]byte(rest), &v); err != nil {
				t.Fatalf("Dockerfile %s %s: want the exec (JSON) form: %v", inst, rest, err)
			}
			if inst == "ENTRYPOINT" {
				img.entrypoint = v
			} else {
				img.cmd = v
			}
		case "ENV":
			k, v, ok := strings.Cut(rest, "=")
			if !ok {
				t.Fatalf("Dockerfile ENV %s: want KEY=VALUE", rest)
			}
			img.env[k] = v
		case "COPY":
			if f := strings.Fields(rest); len(f) == 3 && f[0] == "--from=build" && f[1] == "/out/halt-envoy" {
				img.executables = append(img.executables, f[2])
			}
		}
		for _, m := range link.FindAllStringSubmatch(l, -1) {
			img.executables = append(img.executables, "/bin/"+m[1])
		}
	}
	return img
}

// argv is what a container of the image runs, as Kubernetes decides it: a command
// replaces ENTRYPOINT and drops CMD; arguments alone replace CMD.
func (img image) argv(command, args []string) []string {
	switch {
	case len(command) > 0:
		return append(slices.Clone(command), args...)
	case len(args) > 0:
		return append(slices.Clone(img.entrypoint), args...)
	}
	return append(slices.Clone(img.entrypoint), img.cmd...)
}

// TestHaltRunsAsEnvoyGatewaysRateLimit builds the Deployment Envoy Gateway runs for
// examples/envoy-gateway/envoy-gateway-values.yaml and starts halt as that container
// would start: the image's environment, then the container's (the reference's
// variables Envoy Gateway sets: xDS over mTLS, gRPC over mTLS, Redis, the statsd-mapped
// Prometheus endpoint), its command and args. halt must answer Envoy Gateway's probe
// path, take its configuration from a real xDS management server (go-control-plane,
// mTLS), ignore the image's bundled config, decide over mTLS with the pushed limits on
// Redis, and serve the reference's stats where Envoy Gateway's annotations point.
func TestHaltRunsAsEnvoyGatewaysRateLimit(t *testing.T) {
	redisAddr := testutil.Peer(t, "REDIS_ADDR")
	spec := loadValues(t)
	dep := applyRateLimitDeployment(t, egDeployment(t), rateLimitDeployment(t, spec))
	c := dep.Spec.Template.Spec.Containers[0]

	img := dockerfile(t)
	// Envoy Gateway starts the reference's /bin/ratelimit: halt's image must hold it.
	argv := img.argv(c.Command, c.Args)
	if !slices.Contains(img.executables, argv[0]) {
		t.Fatalf("the container runs %q; halt's image holds halt at %q only", argv, img.executables)
	}
	if !strings.HasPrefix(c.Image, haltImage(t)+":") {
		t.Fatalf("image %s, want halt's", c.Image)
	}
	// Envoy Gateway's ports and probes are the reference's defaults: halt's must match.
	defaults := map[string]string{}
	for _, v := range refenv.Vars() {
		defaults[v.Name] = v.Default
	}
	for _, p := range c.Ports {
		if p.Name == "grpc" && fmt.Sprint(p.ContainerPort) != defaults["GRPC_PORT"] {
			t.Errorf("container port grpc %d, halt listens on GRPC_PORT %s", p.ContainerPort, defaults["GRPC_PORT"])
		}
	}
	var probePath string
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Port.String() != defaults["PORT"] {
			t.Fatalf("%s probe %+v: want an HTTP GET on PORT %s", name, p, defaults["PORT"])
		}
		probePath = p.HTTPGet.Path
	}

	// Certificates as Envoy Gateway's certgen makes them: one CA; halt's certificate
	// serves gRPC and is its client certificate towards the xDS server.
	certs := t.TempDir()
	ca := newCA(t)
	ca.issue(t, filepath.Join(certs, "tls"), "envoy-ratelimit")
	ca.write(t, filepath.Join(certs, "ca.crt"))
	egCert := ca.issue(t, filepath.Join(certs, "eg"), "envoy-gateway")

	// The xDS management server, as Envoy Gateway's (mTLS), with the configuration.
	srvTLS := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{egCert}, ClientCAs: ca.pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})
	var node string
	for _, e := range c.Env {
		if e.Name == "CONFIG_GRPC_XDS_NODE_ID" {
			node = e.Value
		}
	}
	srv := xdstest.Start(t, "127.0.0.1:0", node, srvTLS)
	srv.Set(t, "1", &rlsconf.RateLimitConfig{Name: "default/eg/http", Domain: "default/eg/http", Descriptors: []*rlsconf.RateLimitDescriptor{
		{Key: "x-user-id", RateLimit: &rlsconf.RateLimitPolicy{Unit: rlsconf.RateLimitUnit_MINUTE, RequestsPerUnit: 3}},
	}})

	// The image's bundled configuration, somewhere halt would find it if it read it.
	bundled := t.TempDir()
	if err := os.WriteFile(filepath.Join(bundled, "bundled.yaml"), []byte("domain: bundled\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// The process environment: the test runner's (less halt's and the reference's own
	// variables), the image's ENV, then the container's env in order. Paths and
	// addresses that only exist in the cluster are mapped to this machine's; the
	// listeners move to free loopback ports.
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
	for k, v := range img.env {
		env = append(env, k+"="+v)
	}
	// The image's bundled configuration, where its default command names it, is the
	// test's bundled directory: if Envoy Gateway's container ran that command, halt would
	// serve it.
	args := argv[1:]
	for i, a := range args {
		if a == "/etc/halt-envoy/config" {
			args[i] = bundled
		}
	}
	mapping := filepath.Join(t.TempDir(), "conf.yaml")
	if err := os.WriteFile(mapping, []byte(egStatsdMapping(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := testutil.FreeAddr(t)
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			t.Fatalf("env %s comes from %v: the test has no cluster to read it from", e.Name, e.ValueFrom)
		}
		v := e.Value
		switch {
		case strings.HasPrefix(v, "/certs/"):
			v = filepath.Join(certs, strings.TrimPrefix(v, "/certs/"))
		case e.Name == "REDIS_URL":
			v = redisAddr
		case e.Name == "CONFIG_GRPC_XDS_SERVER_URL":
			v = srv.Addr
		case e.Name == "PROMETHEUS_MAPPER_YAML" && v == "/etc/statsd-exporter/conf.yaml":
			v = mapping
		case e.Name == "PROMETHEUS_ADDR":
			// Envoy Gateway's pod annotations send Prometheus to this port.
			if _, port, _ := net.SplitHostPort(v); port != dep.Spec.Template.Annotations["prometheus.io/port"] {
				t.Errorf("PROMETHEUS_ADDR %s, but the pod annotation prometheus.io/port is %q", v, dep.Spec.Template.Annotations["prometheus.io/port"])
			}
			v = promAddr
		}
		env = append(env, e.Name+"="+v)
	}
	gp, hp := testutil.FreePort(t), testutil.FreePort(t)
	env = append(env, "GRPC_HOST=127.0.0.1", fmt.Sprintf("GRPC_PORT=%d", gp), "HOST=127.0.0.1", fmt.Sprintf("PORT=%d", hp),
		"DEBUG_HOST=127.0.0.1", fmt.Sprintf("DEBUG_PORT=%d", testutil.FreePort(t)),
		// The decision clock starts on testutil.ClockStart: the four calls against the
		// pushed limit of three a minute must not straddle a minute's edge.
		testutil.ClockEnv(0))

	p := testutil.StartHalt(t, testutil.HaltOptions{
		Binary: haltBinary(t), Args: args, Env: env, NoAddrFlags: true,
		GRPCAddr: fmt.Sprintf("127.0.0.1:%d", gp), HTTPAddr: fmt.Sprintf("127.0.0.1:%d", hp),
		ReadyPath: probePath, ReadyTimeout: 30 * time.Second, StopSignal: os.Interrupt,
	})
	testutil.WaitFor(t, 20*time.Second, func() bool { return srv.ACKed("1") })

	// Envoy's side: a gRPC client with a certificate of the same CA.
	clientTLS := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{egCert}, RootCAs: ca.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	cc, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(clientTLS))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	rls := rlspb.NewRateLimitServiceClient(cc)
	user := fmt.Sprintf("user-%d", time.Now().UnixNano())
	for i := 1; i <= 4; i++ {
		want := rlspb.RateLimitResponse_OK
		if i == 4 {
			want = rlspb.RateLimitResponse_OVER_LIMIT
		}
		if got := check(t, rls, "default/eg/http", "x-user-id", user); got.OverallCode != want {
			t.Fatalf("call %d: %v, want %v", i, got.OverallCode, want)
		}
	}
	if got := check(t, rls, "bundled", "k", "v"); got.OverallCode != rlspb.RateLimitResponse_OK || got.Statuses[0].CurrentLimit != nil {
		t.Errorf("the image's bundled config is in force (%v): it must be named only on the image's default command line", got)
	}
	// Without a client certificate, halt's gRPC port refuses the call.
	plain, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := rlspb.NewRateLimitServiceClient(plain).ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "x"}); err == nil {
		t.Error("a client without a certificate was answered: GRPC_SERVER_TLS_CA_CERT must require one")
	}
	// The reference's stats where Envoy Gateway's annotations send Prometheus.
	metricsPath := dep.Spec.Template.Annotations["prometheus.io/path"]
	testutil.WaitFor(t, 20*time.Second, func() bool {
		r, err := http.Get("http://" + promAddr + metricsPath)
		if err != nil {
			return false
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return strings.Contains(string(b), "ratelimit_service_rate_limit_total_hits") && strings.Contains(string(b), "ratelimit_service_rate_limit_over_limit")
	})
	resp, err := http.Get("http://" + p.HTTPAddr + probePath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("Envoy Gateway's probe %s: %s", probePath, resp.Status)
	}
}

func check(t *testing.T, c rlspb.RateLimitServiceClient, domain, key, value string) *rlspb.RateLimitResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: domain, HitsAddend: 1, Descriptors: []*rlcommon.RateLimitDescriptor{
		{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: key, Value: value}}},
	}})
	if err != nil {
		t.Fatalf("%s %s=%s: %v", domain, key, value, err)
	}
	return resp
}

// haltBinary builds cmd/halt-envoy in the main module (with its own dependency
// versions, not this test module's), once per test binary.
func haltBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "halt-envoy")
	cmd := exec.Command(testutil.GoTool(), "build", "-o", bin, "./cmd/halt-envoy")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/halt-envoy: %v\n%s", err, out)
	}
	return bin
}

// testCA is a certificate authority for the test's mTLS.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
	pool *x509.CertPool
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "envoy-gateway test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, der: der, pool: pool}
}

func (ca *testCA) write(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// issue writes PREFIX.crt and PREFIX.key, a certificate for 127.0.0.1 usable by a
// server and a client, and returns it.
func (ca *testCA) issue(t *testing.T, prefix, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{name, name + ".envoy-gateway-system.svc", "localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	if err := os.WriteFile(prefix+".crt", certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prefix+".key", keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
