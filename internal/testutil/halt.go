package testutil

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// haltPkg is the package Binary builds.
const haltPkg = "github.com/halt-envoy/halt-envoy/cmd/halt-envoy"

type build struct {
	once sync.Once
	path string
	err  error
}

var (
	buildMu sync.Mutex
	builds  = map[string]*build{} // by version ("" = none set)
	binDirs []string              // removed by Cleanup
)

// Binary builds cmd/halt-envoy (plain go build, main.version left as is) once per test
// binary into a temporary directory and returns its path. Call [Cleanup] (or use
// [Main]) to remove it.
func Binary(t testing.TB) string {
	t.Helper()
	return BinaryVersion(t, "")
}

// BinaryVersion is [Binary] with main.version set to version (-ldflags -X), built once
// per version.
func BinaryVersion(t testing.TB, version string) string {
	t.Helper()
	buildMu.Lock()
	b := builds[version]
	if b == nil {
		b = &build{}
		builds[version] = b
	}
	buildMu.Unlock()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "halt-envoy-bin-")
		if err != nil {
			b.err = err
			return
		}
		buildMu.Lock()
		binDirs = append(binDirs, dir)
		buildMu.Unlock()
		path := filepath.Join(dir, "halt-envoy")
		args := []string{"build", "-o", path}
		if version != "" {
			args = append(args, "-ldflags", "-X main.version="+version)
		}
		out, err := exec.Command(GoTool(), append(args, haltPkg)...).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", haltPkg, err, out)
			return
		}
		b.path = path
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// Cleanup removes every binary built by [Binary] and [BinaryVersion]. Call it once,
// after m.Run in TestMain.
func Cleanup() {
	buildMu.Lock()
	defer buildMu.Unlock()
	for _, d := range binDirs {
		os.RemoveAll(d)
	}
	binDirs = nil
	builds = map[string]*build{}
}

// GoTool is the go command on PATH: go test puts the GOROOT/bin of the toolchain running
// the test first there, so this is that toolchain's go; bare "go" (an error that names
// it when run) if there is none.
func GoTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "go"
}

// EnvWithoutHalt is the environment without HALT_* variables, so that the caller's
// settings cannot leak into a process under test.
func EnvWithoutHalt() []string {
	out := []string{} // never nil: a nil Env means the whole environment
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HALT_") {
			out = append(out, kv)
		}
	}
	return out
}

// ClockStart is where [ClockEnv] starts a halt-envoy's decision clock: on a minute, five
// minutes into an hour, mid-month, so that a test's short sequence of calls never
// straddles the edge of a minute, an hour, a day or a month window, whatever the time of
// day the test runs at. It lies ahead of the wall clock, so a store that expires keys on
// the wall clock (the memory store's sweeper, the PostgreSQL cleaner) removes them late,
// never while the decisions still count them.
const ClockStart = "2030-01-15T10:05:00Z"

// ClockEnv is the environment entry (HALT_TEST_CLOCK_START) that starts the decision clock
// of the halt-envoy it is given to at [ClockStart] plus after; from there the clock runs at
// the wall clock's pace. A test that restarts halt on state the first run left passes
// the time since the first start, so that the clock runs on across the restart.
func ClockEnv(after time.Duration) string {
	start, err := time.Parse(time.RFC3339, ClockStart)
	if err != nil {
		panic(err) // a constant
	}
	return "HALT_TEST_CLOCK_START=" + start.Add(after).Format(time.RFC3339Nano)
}

// HaltOptions says how [StartHalt] runs halt-envoy. The zero value runs [Binary] with
// the caller's environment, waits up to 20 s for GET http://HTTPAddr/readyz to answer
// 200, and kills the process when the test ends.
type HaltOptions struct {
	// Binary is the executable; "" means Binary(t).
	Binary string
	// Command comes first on the command line (e.g. "serve"); "" means none.
	Command string
	// LogLevel is passed as --log-level after the address flags when not "".
	LogLevel string
	// Args follow --grpc-addr, --http-addr and --log-level.
	Args []string
	// Env is the whole environment of the process; nil means os.Environ().
	Env []string
	// NoAddrFlags leaves out --grpc-addr and --http-addr: Env sets the listeners (the
	// reference service's GRPC_PORT and PORT, say) at GRPCAddr and HTTPAddr.
	NoAddrFlags        bool
	GRPCAddr, HTTPAddr string

	// NoWait returns at once, without waiting for readiness (see [Process.Ready]).
	NoWait bool
	// ReadyPath is polled until it answers 200; "" means /readyz.
	ReadyPath string
	// Scheme of the readiness URL: "" means http.
	Scheme string
	// Client polls readiness; nil means http.DefaultClient.
	Client *http.Client
	// ReadyTimeout bounds the wait for readiness; 0 means 20 s.
	ReadyTimeout time.Duration

	// StopSignal, when set, is sent first when the test ends; the process is killed
	// only if it has not exited StopTimeout (0: 10 s) later. Nil: killed at once.
	StopSignal os.Signal
	// StopTimeout: see StopSignal.
	StopTimeout time.Duration
}

// Process is a running halt-envoy started by [StartHalt].
type Process struct {
	// Cmd is the running command.
	Cmd *exec.Cmd
	// GRPCAddr and HTTPAddr are the loopback addresses it listens on.
	GRPCAddr, HTTPAddr string
	// Log collects its stdout and stderr.
	Log *SyncBuffer
	// Done delivers the exit (the result of Cmd.Wait). It has room for one value:
	// whoever receives it should put it back (Done <- err) for the test's cleanup.
	Done chan error

	opts HaltOptions
}

// StartHalt runs halt-envoy on free loopback ports (--grpc-addr, --http-addr) and,
// unless opts.NoWait, waits until it is ready (failing the test if it exits first or
// is not ready in time). It is stopped when the test ends, and its log is printed if
// the test failed.
func StartHalt(t testing.TB, opts HaltOptions) *Process {
	t.Helper()
	bin := opts.Binary
	if bin == "" {
		bin = Binary(t)
	}
	p := &Process{GRPCAddr: opts.GRPCAddr, HTTPAddr: opts.HTTPAddr, Log: &SyncBuffer{}, Done: make(chan error, 1), opts: opts}
	var args []string
	if opts.Command != "" {
		args = append(args, opts.Command)
	}
	if !opts.NoAddrFlags {
		p.GRPCAddr, p.HTTPAddr = FreeAddr(t), FreeAddr(t)
		args = append(args, "--grpc-addr", p.GRPCAddr, "--http-addr", p.HTTPAddr)
	}
	if opts.LogLevel != "" {
		args = append(args, "--log-level", opts.LogLevel)
	}
	p.Cmd = exec.Command(bin, append(args, opts.Args...)...)
	p.Cmd.Stdout, p.Cmd.Stderr = p.Log, p.Log
	p.Cmd.Env = opts.Env
	if p.Cmd.Env == nil {
		p.Cmd.Env = os.Environ()
	}
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.Done <- p.Cmd.Wait() }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("halt-envoy %s log:\n%s", p.GRPCAddr, p.Log.String())
		}
	})
	if !opts.NoWait {
		if err := p.Ready(); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// stop ends the process (see HaltOptions.StopSignal) and waits for it.
func (p *Process) stop() {
	if p.opts.StopSignal != nil {
		p.Cmd.Process.Signal(p.opts.StopSignal)
		wait := p.opts.StopTimeout
		if wait == 0 {
			wait = 10 * time.Second
		}
		select {
		case err := <-p.Done:
			p.Done <- err
			return
		case <-time.After(wait):
		}
	}
	p.Kill()
}

// Ready polls the readiness URL until it answers 200. It returns an error when the
// process exits first or the wait times out, and does not touch the test, so it may
// run on any goroutine.
func (p *Process) Ready() error {
	scheme, path, client, within := p.opts.Scheme, p.opts.ReadyPath, p.opts.Client, p.opts.ReadyTimeout
	if scheme == "" {
		scheme = "http"
	}
	if path == "" {
		path = "/readyz"
	}
	if client == nil {
		client = http.DefaultClient
	}
	if within == 0 {
		within = 20 * time.Second
	}
	url := scheme + "://" + p.HTTPAddr + path
	deadline := time.Now().Add(within)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("halt-envoy %s: %s not 200 after %v (%v):\n%s", p.GRPCAddr, url, within, err, p.Log.String())
		}
		select {
		case err := <-p.Done:
			p.Done <- err
			return fmt.Errorf("halt-envoy %s exited early (%v):\n%s", p.GRPCAddr, err, p.Log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Term sends SIGTERM and waits up to within for the exit, failing the test if it does
// not come or is not clean (exit status 0).
func (p *Process) Term(t testing.TB, within time.Duration) {
	t.Helper()
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.Done:
		p.Done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, p.Log.String())
		}
	case <-time.After(within):
		t.Fatalf("no exit %v after SIGTERM", within)
	}
}

// Kill kills the process (if still running) and waits for it.
func (p *Process) Kill() {
	p.Cmd.Process.Kill()
	err := <-p.Done
	p.Done <- err
}
