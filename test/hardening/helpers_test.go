package hardening

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// TestMain removes the binary built for the run. Started with HALT_RAPID_RESET_ATTACK set
// (by TestRapidReset), the test binary is instead the attacker process: a process of its
// own, so that its busy loops do not starve the test's normal client of its scheduler.
// Started with HALT_MEASURE_CHILD set (by runBounded), it runs the command its arguments
// name and reports that child's peak memory and CPU (see measureChild).
func TestMain(m *testing.M) {
	if addr := os.Getenv("HALT_RAPID_RESET_ATTACK"); addr != "" {
		os.Exit(attack(addr))
	}
	if os.Getenv(measureEnv) != "" {
		os.Exit(measureChild(os.Args[1:]))
	}
	testutil.Main(m)
}

const limits = `
domain: edge
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 5}
`

// configDir writes the test's rate-limit config into a fresh directory.
func configDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "limits.yaml"), []byte(limits), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// start runs the binary on the test config with args, in an environment without HALT_*
// variables, and waits for /healthz.
func start(t *testing.T, env []string, args ...string) *testutil.Process {
	t.Helper()
	return testutil.StartHalt(t, testutil.HaltOptions{
		LogLevel:  "debug",
		Args:      append([]string{"--config", configDir(t)}, args...),
		Env:       append(testutil.EnvWithoutHalt(), env...),
		ReadyPath: "/healthz",
	})
}

var client = &http.Client{Timeout: 10 * time.Second}

// get answers the status and body of a GET with optional headers (name, value pairs).
func get(t *testing.T, url string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func writeFileErr(dir, name, body string) error {
	return os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644)
}
