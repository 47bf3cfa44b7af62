package conformance_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

// casStore is a compare-and-swap store in process memory, built the way the memcached,
// MongoDB and DynamoDB stores are (read the state and its version, decide in Go, write
// back only if the version is unchanged), with switches that break it on purpose. It
// exists to prove that the suite fails a broken store; it is not a store to use.
type casStore struct {
	mode string // "control": retries until it wins; "down", "giveup", "lossy": broken

	inflight atomic.Int32 // ops inside apply now
	closed   atomic.Bool
	mu       sync.Mutex
	items    map[string]casItem
}

type casItem struct {
	version int64
	state   []byte
}

func (s *casStore) Apply(_ context.Context, now int64, ops []*backends.Op) error {
	var first error
	for _, op := range ops {
		op.Result, op.Err = algorithms.Result{}, nil
		r, err := s.apply(now, op)
		if err != nil {
			op.Err = err
			if first == nil {
				first = err
			}
			continue
		}
		op.Result = r
	}
	return first
}

func (s *casStore) apply(now int64, op *backends.Op) (algorithms.Result, error) {
	if s.closed.Load() {
		return algorithms.Result{}, fmt.Errorf("closed: %w", backends.ErrUnavailable)
	}
	if err := op.Limit.Validate(op.Algorithm); err != nil {
		return algorithms.Result{}, err
	}
	if s.mode == "down" {
		return algorithms.Result{}, fmt.Errorf("broken store: %w", backends.ErrUnavailable)
	}
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	var st algorithms.State
	for {
		s.mu.Lock()
		it := s.items[op.Key]
		s.mu.Unlock()
		if err := backends.DecodeState(it.state, &st); err != nil {
			return algorithms.Result{}, err
		}
		r := algorithms.Decide(op.Algorithm, &st, now, &op.Limit, op.Cost)
		// The window in which another writer gets in first. While other ops are in flight
		// the broken stores make it as long as a round trip to a server, so that the
		// workers overlap however the scheduler runs them; the control, which retries
		// every lost race, and the serial parts of the suite only yield (sleeping there
		// would make the run take seconds).
		if s.mode != "control" && s.inflight.Load() > 1 {
			time.Sleep(100 * time.Microsecond)
		} else {
			runtime.Gosched()
		}
		s.mu.Lock()
		if s.mode == "lossy" || s.items[op.Key].version == it.version {
			s.items[op.Key] = casItem{version: it.version + 1, state: backends.EncodeState(nil, &st)}
			s.mu.Unlock()
			return r, nil
		}
		s.mu.Unlock()
		if s.mode == "giveup" {
			return algorithms.Result{}, fmt.Errorf("broken store: key %q: %w", op.Key, backends.ErrContention)
		}
	}
}

func (s *casStore) Delete(_ context.Context, keys ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		delete(s.items, k)
	}
	return nil
}

func (s *casStore) Ping(context.Context) error {
	if s.mode == "down" {
		return backends.ErrUnavailable
	}
	return nil
}

func (s *casStore) Close() error {
	s.closed.Store(true)
	return nil
}

// brokenEnv selects the store TestBrokenStoreChild runs the suite against.
const brokenEnv = "HALT_CONFORMANCE_CHILD_STORE"

// TestBrokenStoreChild is the child process of TestBrokenStoresFail: with brokenEnv set
// it runs the whole suite against that store (and is expected to fail for the broken
// ones). Run on its own, without brokenEnv, it has nothing to do and passes.
func TestBrokenStoreChild(t *testing.T) {
	mode := os.Getenv(brokenEnv)
	if mode == "" {
		return
	}
	opt := conformance.Options{}
	if mode != "control" {
		// The most the suite lets any store give up on: the broken ones must fail even so.
		opt = conformance.Options{MaxContention: conformance.MaxContentionLimit, Reason: "the suite's ceiling"}
	}
	conformance.Run(t, func(*testing.T) backends.Store {
		return &casStore{mode: mode, items: map[string]casItem{}}
	}, opt)
}

// TestBrokenStoresFail proves the suite cannot pass vacuously: run in a child process
// against a store that is always unavailable, one whose compare-and-swap gives up on
// its first lost race (even with the largest contention allowance the suite accepts), and one
// that writes without comparing (lost updates), every concurrency case fails; the same
// compare-and-swap done right passes the whole suite.
func TestBrokenStoresFail(t *testing.T) {
	cases := conformance.Cases()
	for _, mode := range []string{"control", "down", "giveup", "lossy"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenStoreChild$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), brokenEnv+"="+mode)
			out, err := cmd.CombinedOutput()
			results := subtestResults(string(out))
			if mode == "control" {
				if err != nil {
					t.Fatalf("a correct compare-and-swap store failed the suite (%v):\n%s", err, out)
				}
				return
			}
			if err == nil {
				t.Fatalf("the %s store passed the suite:\n%s", mode, out)
			}
			for _, c := range cases {
				name := "TestBrokenStoreChild/concurrency/" + c.Name
				if results[name] != "FAIL" {
					t.Errorf("%s: %q, want FAIL", name, results[name])
				}
				if mode != "down" { // the serial parts do not race: they must still pass
					if tl := "TestBrokenStoreChild/timelines/" + c.Name; results[tl] != "PASS" {
						t.Errorf("%s: %q, want PASS (the store is only broken under concurrency)", tl, results[tl])
					}
				}
			}
			if t.Failed() {
				t.Logf("child output:\n%s", out)
			}
		})
	}
}

var resultLine = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+)`)

// subtestResults maps each test name in go test -v output to PASS, FAIL or SKIP.
func subtestResults(out string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if g := resultLine.FindStringSubmatch(line); g != nil {
			m[g[2]] = g[1]
		}
	}
	return m
}
