package testutil

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// StartPrometheus runs a real Prometheus (the Debian package's binary; the test is
// skipped, or fails under HALT_TEST_PEERS=1, without it) with the configuration file
// cfg (YAML) on the TSDB directory data ("" for a fresh one), and returns its base URL
// once it is ready. It is stopped when the test ends, and its log printed if the test
// failed.
func StartPrometheus(t testing.TB, cfg, data string) string {
	t.Helper()
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		Missing(t, "no prometheus binary on PATH (Debian package prometheus)")
	}
	dir := t.TempDir()
	if data == "" {
		data = filepath.Join(dir, "data")
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := FreeAddr(t)
	log := &SyncBuffer{}
	cmd := exec.Command(prom, "--config.file="+cfgPath, "--storage.tsdb.path="+data, "--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", log.String())
		}
	})
	base := "http://" + addr
	WaitFor(t, 60*time.Second, func() bool {
		select {
		case <-exited:
			t.Fatalf("prometheus exited:\n%s", log.String())
		default:
		}
		r, err := http.Get(base + "/-/ready")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == http.StatusOK
	})
	return base
}

// Backfill writes openMetrics (OpenMetrics text with timestamps, ending "# EOF") into
// a new TSDB directory with promtool, for StartPrometheus: the test decides every
// sample's time.
func Backfill(t testing.TB, openMetrics string) string {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		Missing(t, "no promtool on PATH (Debian package prometheus)")
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "series.om")
	if err := os.WriteFile(in, []byte(openMetrics), 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if out, err := exec.Command(promtool, "tsdb", "create-blocks-from", "openmetrics", in, data).CombinedOutput(); err != nil {
		t.Fatalf("promtool: %v\n%s", err, out)
	}
	return data
}
