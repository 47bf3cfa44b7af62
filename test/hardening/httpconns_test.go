package hardening

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// closedWithin reports whether the server closes c (a read ends in EOF or an error other
// than our own deadline) within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	if err == nil {
		return true // EOF
	}
	ne, ok := err.(net.Error)
	return !ok || !ne.Timeout()
}

// TestHTTPConnectionsBounded, through the binary with small limits: a request whose body
// never finishes and an idle keep-alive connection are closed after their timeouts; and
// with the process's descriptors scarce (ulimit -n 256, both limits, so halt cannot raise
// them), 600 such slow connections to the HTTP port stay within its cap (queued by the
// kernel, not holding descriptors) and the gRPC port keeps answering new connections.
func TestHTTPConnectionsBounded(t *testing.T) {
	const readTimeout, idleTimeout = 500 * time.Millisecond, 500 * time.Millisecond
	dir := t.TempDir()
	writeFile(t, dir, "limits.yaml", unlimited)
	// A wrapper that lowers both descriptor limits, as a container's runtime may.
	wrapper := filepath.Join(t.TempDir(), "halt-lowfd")
	script := fmt.Sprintf("#!/bin/sh\nulimit -n 256 || exit 97\nexec %q \"$@\"\n", testutil.Binary(t))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	p := testutil.StartHalt(t, testutil.HaltOptions{
		Binary: wrapper, LogLevel: "debug", ReadyPath: "/healthz", Env: testutil.EnvWithoutHalt(),
		Args: []string{"--config", dir, "--http-read-timeout", readTimeout.String(), "--http-idle-timeout", idleTimeout.String()},
	})
	if !strings.Contains(p.Log.String(), "file_descriptors=256") || !strings.Contains(p.Log.String(), "http_max_conns=32") {
		t.Fatalf("the start-up log does not give the descriptor limit and the caps derived from it:\n%s", p.Log.String())
	}
	// Well past the read and idle timeouts, and past the header timeout (5 s) too.
	const bound = 10 * time.Second

	// A body that never finishes.
	slow, err := net.Dial("tcp", p.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprintf(slow, "POST /json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"domain\":")
	start := time.Now()
	if !closedWithin(slow, bound) {
		t.Fatalf("a request whose body never finishes is still open after %v (read timeout %v)", bound, readTimeout)
	}
	t.Logf("slow body closed after %v (read timeout %v)", time.Since(start).Round(time.Millisecond), readTimeout)

	// An idle keep-alive connection, after one answered request.
	idle, err := net.Dial("tcp", p.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprintf(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(idle)
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, "200") {
		t.Fatalf("healthz on the keep-alive connection: %q %v", line, err)
	}
	start = time.Now()
	if !closedWithin(idle, bound) {
		t.Fatalf("an idle keep-alive connection is still open after %v (idle timeout %v)", bound, idleTimeout)
	}
	t.Logf("idle keep-alive connection closed after %v (idle timeout %v)", time.Since(start).Round(time.Millisecond), idleTimeout)

	// 600 slow connections: far past the HTTP cap and the descriptors. Each sends its
	// headers and part of a body, so that only the read timeout ends it.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 600; i++ {
		c, err := net.DialTimeout("tcp", p.HTTPAddr, 5*time.Second)
		if err != nil {
			break // the kernel's accept queue is full: the flood is as large as it gets
		}
		fmt.Fprintf(c, "POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
		conns = append(conns, c)
	}
	t.Logf("%d slow connections opened to the HTTP port", len(conns))
	// New gRPC connections are served meanwhile.
	for i := 0; i < 5; i++ {
		if got := codes(t, p.GRPCAddr, "u", 1); got != "OK" {
			t.Fatalf("gRPC call on a new connection during the flood: %s", got)
		}
	}
	if strings.Contains(p.Log.String(), "too many open files") {
		t.Fatalf("the process ran out of descriptors:\n%s", p.Log.String())
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Cmd.Process.Pid))
	t.Logf("the server holds %d file descriptors of 256 during the flood", len(fds))
}
