package hardening

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// writeBig writes a valid-looking YAML file of about size bytes: each entry is what a
// real config or key file holds, so that only a cap (not a parse error) stops it early.
func writeBig(t *testing.T, path string, size int, header string, entry func(i int) string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	n, _ := w.WriteString(header)
	for i := 0; n < size; i++ {
		m, _ := w.WriteString(entry(i))
		n += m
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// runBounded runs the binary with args until it exits (at most a minute) and returns its
// output, peak resident memory and CPU time. The binary is started by a fresh process
// (this test binary in its measureChild mode), not by the test process: Go starts a
// child with vfork, so a child's peak resident memory (ru_maxrss) counts its parent's
// resident memory at the exec, and the test process's (over 100 MiB after other tests
// under -race) would stand for the binary's.
func runBounded(t *testing.T, args ...string) (string, int64, time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*childLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], append([]string{testutil.Binary(t)}, args...)...)
	cmd.Env = append(testutil.EnvWithoutHalt(), measureEnv+"=1")
	var out, report bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &report
	err := cmd.Run()
	var rss, cpu int64
	switch last := lastLine(report.String()); {
	case last == "timeout":
		t.Fatalf("%v: still running after %v:\n%.2000s", args, childLimit, out.String())
	case ctx.Err() != nil:
		t.Fatalf("%v: the measuring process still running after %v:\n%.2000s", args, 2*childLimit, out.String())
	default:
		if _, scanErr := fmt.Sscanf(last, "rusage %d %d", &rss, &cpu); scanErr != nil {
			t.Fatalf("%v: no rusage from the measuring process (%v): %q\n%.2000s", args, err, report.String(), out.String())
		}
	}
	return out.String(), rss, time.Duration(cpu), err
}

// measureEnv starts the test binary as measureChild.
const measureEnv = "HALT_MEASURE_CHILD"

// childLimit bounds how long measureChild lets its child run.
const childLimit = time.Minute

// measureChild runs args[0] with args[1:] (its output on stdout; the environment without
// HALT_* variables), at most childLimit, and writes "rusage RSS CPU" to stderr: the
// child's peak resident bytes and CPU nanoseconds, or "timeout". It returns the child's
// exit code. The child's ru_maxrss counts this process's own resident memory at the
// exec (that of a test binary just started, about 35 MiB under -race), no more.
func measureChild(args []string) int {
	ctx, cancel := context.WithTimeout(context.Background(), childLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = testutil.EnvWithoutHalt()
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives this process
	err := cmd.Run()
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "timeout")
		return 1
	}
	if cmd.ProcessState == nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	fmt.Fprintf(os.Stderr, "rusage %d %d\n", ru.Maxrss*1024, ru.Utime.Nano()+ru.Stime.Nano())
	if code := cmd.ProcessState.ExitCode(); code >= 0 {
		return code
	}
	return 1 // killed by a signal
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestHugeFilesRefused: a 100 MB config file, a 100 MB directory of files under the
// per-file cap, and a 100 MB authz key file are refused at start (and by validate) with
// an error naming the file and the cap, in bounded memory and CPU: the binary's peak
// resident memory stays under 100 MiB and its CPU time under 10 s (a generous bound: the
// refusal is a stat; before the caps the 100 MB file took ~3 GB and 85 s to refuse).
func TestHugeFilesRefused(t *testing.T) {
	const size = 100_000_000
	const maxRSS, maxCPU = 100 << 20, 10 * time.Second
	dir := t.TempDir()
	descriptor := func(i int) string {
		return fmt.Sprintf("  - key: k%d\n    value: v%d\n    rate_limit: {unit: minute, requests_per_unit: %d}\n", i, i, i+1)
	}
	bigCfg := filepath.Join(dir, "big.yaml")
	writeBig(t, bigCfg, size, "domain: big\ndescriptors:\n", descriptor)

	// Many files, each under the cap, together far above the total cap.
	many := filepath.Join(dir, "many")
	os.Mkdir(many, 0o755)
	for i := 0; i < 30; i++ {
		writeBig(t, filepath.Join(many, fmt.Sprintf("f%02d.yaml", i)), 3_500_000, fmt.Sprintf("domain: d%d\ndescriptors:\n", i), descriptor)
	}

	keysDir := filepath.Join(dir, "authz")
	os.Mkdir(keysDir, 0o755)
	os.WriteFile(filepath.Join(keysDir, "authz.yaml"), []byte("domain: edge\nidentity: [{api_key: {header: x-api-key}}]\napi_keys_file: keys.yaml\n"), 0o644)
	keys := filepath.Join(keysDir, "keys.yaml")
	writeBig(t, keys, size, "api_keys:\n", func(i int) string {
		return fmt.Sprintf("  - {sha256: %064x, customer: c%d, plan: pro}\n", i, i)
	})

	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"validate a file", []string{"validate", "--config", bigCfg}, bigCfg + ":1:1: 95.4 MiB, more than the cap of 4 MiB (raise it with --max-config-bytes)"},
		{"serve a file", []string{"--config", bigCfg, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, "95.4 MiB, more than the cap of 4 MiB (raise it with --max-config-bytes)"},
		{"validate a directory", []string{"validate", "--config", many}, "more than the cap of 16 MiB (raise it with --max-config-total-bytes)"},
		{"serve a key file", []string{"--config", configDir(t), "--authz-config", filepath.Join(keysDir, "authz.yaml"), "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"},
			keys + ": 95.4 MiB, more than the cap of 16 MiB (raise it with --max-authz-keys-bytes)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, rss, cpu, err := runBounded(t, c.args...)
			t.Logf("exit %v, peak RSS %.1f MiB, CPU %v", err, float64(rss)/(1<<20), cpu)
			if err == nil {
				t.Fatalf("accepted:\n%.2000s", out)
			}
			if !strings.Contains(out, c.want) {
				t.Fatalf("the error does not name the file and the cap (want %q):\n%.2000s", c.want, out)
			}
			if rss > maxRSS || cpu > maxCPU {
				t.Fatalf("refusing cost %.1f MiB peak RSS and %v CPU (bounds %d MiB, %v)", float64(rss)/(1<<20), cpu, maxRSS>>20, maxCPU)
			}
		})
	}
	// The caps can be raised: the directory's files load with a higher total cap
	// (validate only: parsing 100 MB is what the caps are there to refuse by default).
	out, _, _, err := runBounded(t, "validate", "--config", filepath.Join(keysDir), "--max-config-total-bytes", "200MiB", "--max-config-bytes", "1KiB")
	if err == nil || !strings.Contains(out, "more than the cap of 1 KiB") {
		t.Fatalf("--max-config-bytes not applied:\n%.2000s", out)
	}
}
