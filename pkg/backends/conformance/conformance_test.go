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

// casStore is a compare-and-swap store in process memory: the I/O of one key behind the
// stores' own loop, backends.CAS (read the state and its version, decide, write back only
// if the version is unchanged), the way memcached, MongoDB and DynamoDB use it, with
// switches that break it on purpose. It exists to prove that the suite fails a broken
// store; it is not a store to use.
type casStore struct {
	// mode: "control" is the real loop with its default attempts; "down" fails every
	// call; "giveup" is the real loop allowed one attempt (it gives up on its first lost
	// race); "lossy" writes without comparing versions (lost updates).
	mode string

	inflight atomic.Int32 // ops inside Apply now
	raced    atomic.Bool  // two ops were ever inside Apply at once: the concurrency part
	closed   atomic.Bool
	mu       sync.Mutex
	items    map[string]casItem
}

type casItem struct {
	version int64
	state   []byte
}

func (s *casStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	if s.inflight.Add(1) > 1 {
		s.raced.Store(true)
	}
	defer s.inflight.Add(-1)
	// A short backoff between rounds, as each store sets one to suit its round trip.
	cas := backends.CAS{Store: "broken " + s.mode, Backoff: backends.Backoff{Free: 1, Step: 20 * time.Microsecond, MaxSteps: 8}}
	if s.mode == "giveup" {
		cas.Attempts = 1
	}
	var first error
	var st algorithms.State
	for _, op := range ops {
		op.Result, op.Err = algorithms.Result{}, nil
		var r algorithms.Result
		var err error
		switch {
		case s.closed.Load():
			err = fmt.Errorf("closed: %w", backends.ErrUnavailable)
		case s.mode == "down":
			err = fmt.Errorf("broken store: %w", backends.ErrUnavailable)
		default:
			if err = op.Limit.Validate(op.Algorithm); err == nil {
				r, err = cas.Decide(ctx, &casIO{s: s}, op.Key, op, now, &st)
			}
		}
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

// casIO is backends.Versioned over casStore: it remembers the version it read.
type casIO struct {
	s       *casStore
	found   bool
	version int64
}

func (io *casIO) Read(_ context.Context, key string, st *algorithms.State) (bool, error) {
	io.s.mu.Lock()
	it, ok := io.s.items[key]
	io.s.mu.Unlock()
	io.found, io.version = ok, it.version
	if !ok {
		return false, nil
	}
	return true, backends.DecodeState(it.state, st)
}

func (io *casIO) Write(_ context.Context, key string, st *algorithms.State, _, _ int64) (bool, error) {
	s := io.s
	// The window in which another writer gets in first. Once ops have run concurrently on
	// this store (the concurrency part: each part opens its own store) the broken stores
	// make it as long as a round trip to a server, so that the workers overlap however
	// the scheduler runs them, a loaded machine included; the control, which retries every
	// lost race, and the serial parts of the suite only yield (sleeping there would make
	// the run take seconds).
	if s.mode != "control" && s.raced.Load() {
		time.Sleep(100 * time.Microsecond)
	} else {
		runtime.Gosched()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, exists := s.items[key]
	if s.mode != "lossy" && (exists != io.found || exists && cur.version != io.version) {
		return false, nil
	}
	s.items[key] = casItem{version: cur.version + 1, state: backends.EncodeState(nil, st)}
	return true, nil
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
	// The allowance the real compare-and-swap stores have, for every mode.
	opt := conformance.Options{MaxContention: 0.05, Reason: "as memcached, MongoDB and DynamoDB"}
	conformance.Run(t, func(*testing.T) backends.Store {
		return &casStore{mode: mode, items: map[string]casItem{}}
	}, opt)
}

// TestBrokenStoresFail proves the suite cannot pass vacuously: run in a child process
// against a store that is always unavailable, one whose compare-and-swap loop (the
// stores' own backends.CAS) gives up on its first lost race, and one that writes
// without comparing (lost updates), every concurrency case fails, with the contention
// allowance the real stores have (5 %); the same loop with its default attempts passes
// the whole suite.
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
