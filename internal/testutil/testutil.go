// Package testutil holds the helpers that halt-envoy's tests share: building the
// halt-envoy binary once per test binary and running it on free loopback ports, free
// ports, the peer environment rule (skip, or fail under HALT_TEST_PEERS=1), polling, a
// goroutine-safe buffer, and a private PostgreSQL.
//
// A package that calls [Binary], [BinaryVersion] or [StartHalt] should remove the built
// binaries when its tests end, with a TestMain that calls [Main] (or runs [Cleanup]
// after m.Run):
//
//	func TestMain(m *testing.M) { testutil.Main(m) }
package testutil

import (
	"bytes"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Main runs the tests of m, removes what the package's tests built ([Cleanup]) and
// exits with the tests' exit code. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

// FreeAddr returns a loopback address ("127.0.0.1:PORT") nobody listens on right now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// FreePort returns a loopback port nobody listens on right now.
func FreePort(t testing.TB) int {
	t.Helper()
	_, port, err := net.SplitHostPort(FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The skips that scripts/test.sh (internal/testsummary) lets pass, told apart by the
// start of their message. Every other skip fails the run unless scripts/allowed-skips.txt
// names the test with a reason.
const (
	// SkipNoPeer starts the message of a skip for a missing peer ([Peer], [Missing],
	// [StartPrivatePostgres]): allowed only in a run without peers, which then says PARTIAL.
	SkipNoPeer = "no peer: "
	// SkipShort starts the message of a skip in -short mode ([SkipIfShort]): allowed only
	// in a run with -short, which then says PARTIAL.
	SkipShort = "short mode: "
)

// Peer returns the value of the environment variable name (a test peer's address, URL
// or DSN). When it is unset the test is skipped, or fails when HALT_TEST_PEERS=1 (the
// run promised every peer: scripts/test.sh).
func Peer(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		Missing(t, name+" not set")
	}
	return v
}

// Missing skips the test because a peer or a tool it needs is missing (what says so,
// e.g. "redis-server not installed"), or fails it when HALT_TEST_PEERS=1.
func Missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("HALT_TEST_PEERS") == "1" {
		t.Fatalf("%s and HALT_TEST_PEERS=1", what)
	}
	t.Skip(SkipNoPeer + what)
}

// SkipIfShort skips a long test (why says what makes it long) under go test -short.
func SkipIfShort(t testing.TB, why string) {
	t.Helper()
	if testing.Short() {
		t.Skip(SkipShort + why)
	}
}

// WaitFor polls cond every 25 ms until it is true, and fails the test when it is still
// false after timeout.
func WaitFor(t testing.TB, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent use: a child process's stdout and
// stderr written from two goroutines while the test reads it. The zero value is ready.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Reset empties the buffer.
func (s *SyncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}
