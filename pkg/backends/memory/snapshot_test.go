package memory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

const t0 = int64(1_700_000_000_000_000) // µs

// fill puts keys of several algorithms (the sliding log included) into s at t0.
func fill(t *testing.T, s *Store) map[string]algorithms.State {
	t.Helper()
	algs := []algorithms.Algorithm{algorithms.FixedWindow, algorithms.TokenBucket, algorithms.SlidingWindow, algorithms.SlidingWindowCounter, algorithms.LeakyBucket}
	for i := 0; i < 500; i++ {
		op := &backends.Op{
			Key:       fmt.Sprintf("k%d", i),
			Algorithm: algs[i%len(algs)],
			Limit:     algorithms.Limit{Requests: 10, Period: 3_600_000_000},
			Cost:      int64(1 + i%3),
		}
		for j := 0; j < 1+i%4; j++ {
			if err := s.Apply(context.Background(), t0+int64(j)*1000, []*backends.Op{op}); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := map[string]algorithms.State{}
	s.Range(t0, func(k string, st *algorithms.State, _ int64) bool {
		c := *st
		c.Log = append([]algorithms.Entry(nil), st.Log...)
		want[k] = c
		return true
	})
	if len(want) != 500 {
		t.Fatalf("filled %d keys", len(want))
	}
	return want
}

func dump(s *Store, now int64) map[string]algorithms.State {
	got := map[string]algorithms.State{}
	s.Range(now, func(k string, st *algorithms.State, _ int64) bool {
		c := *st
		c.Log = append([]algorithms.Entry(nil), st.Log...)
		got[k] = c
		return true
	})
	return got
}

func normalize(m map[string]algorithms.State) {
	for k, v := range m {
		if len(v.Log) == 0 {
			v.Log = nil
			m[k] = v
		}
	}
}

func writeTestSnapshot(t *testing.T) (string, map[string]algorithms.State) {
	t.Helper()
	s := New(Config{SweepInterval: -1})
	defer s.Close()
	want := fill(t, s)
	path := filepath.Join(t.TempDir(), "halt.snap")
	n, err := WriteSnapshot(s, path, t0)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(want) {
		t.Fatalf("wrote %d keys, want %d", n, len(want))
	}
	return path, want
}

func TestSnapshotRoundTrip(t *testing.T) {
	path, want := writeTestSnapshot(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left behind: %v", err)
	}
	t.Logf("%d keys: %d bytes (%.1f bytes/key)", len(want), fi.Size(), float64(fi.Size())/float64(len(want)))

	r := New(Config{SweepInterval: -1})
	defer r.Close()
	st, err := LoadSnapshot(r, path, t0+1)
	if err != nil {
		t.Fatal(err)
	}
	if st.Restored != len(want) || st.Expired != 0 {
		t.Fatalf("stats %+v", st)
	}
	got := dump(r, t0+1)
	normalize(got)
	normalize(want)
	if !reflect.DeepEqual(got, want) {
		t.Fatal("restored states differ from the snapshot's")
	}
	// Decisions go on from the restored state: k0 (fixed window, 10/h, cost 1, one hit)
	// has 9 left, so the next hit leaves 8.
	op := &backends.Op{Key: "k0", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 10, Period: 3_600_000_000}, Cost: 1}
	if err := r.Apply(context.Background(), t0+2, []*backends.Op{op}); err != nil {
		t.Fatal(err)
	}
	if op.Result.Remaining != 8 {
		t.Fatalf("after restore: %+v", op.Result)
	}
}

func TestSnapshotSkipsExpired(t *testing.T) {
	s := New(Config{SweepInterval: -1})
	defer s.Close()
	short := algorithms.Limit{Requests: 5, Period: 1_000_000}
	long := algorithms.Limit{Requests: 5, Period: 3_600_000_000}
	for i := 0; i < 20; i++ {
		lim := long
		if i%2 == 0 {
			lim = short
		}
		op := &backends.Op{Key: fmt.Sprint(i), Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		if err := s.Apply(context.Background(), t0, []*backends.Op{op}); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "snap")
	if n, err := WriteSnapshot(s, path, t0); err != nil || n != 20 {
		t.Fatalf("wrote %d: %v", n, err)
	}
	r := New(Config{SweepInterval: -1})
	defer r.Close()
	st, err := LoadSnapshot(r, path, t0+60_000_000) // a minute later: the 1 s windows are gone
	if err != nil {
		t.Fatal(err)
	}
	if st.Restored != 10 || st.Expired != 10 || r.Len() != 10 {
		t.Fatalf("stats %+v, len %d", st, r.Len())
	}
}

func TestSnapshotEmptyStore(t *testing.T) {
	s := New(Config{SweepInterval: -1})
	defer s.Close()
	path := filepath.Join(t.TempDir(), "snap")
	if n, err := WriteSnapshot(s, path, t0); err != nil || n != 0 {
		t.Fatalf("%d %v", n, err)
	}
	st, err := LoadSnapshot(New(Config{SweepInterval: -1}), path, t0)
	if err != nil || st != (SnapshotStats{}) {
		t.Fatalf("%+v %v", st, err)
	}
}

func TestSnapshotRefusesBadFiles(t *testing.T) {
	path, _ := writeTestSnapshot(t)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func([]byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	cases := map[string]struct {
		data []byte
		want string
	}{
		"empty":           {[]byte{}, "header"},
		"short header":    {good[:20], "header"},
		"zeroed header":   {mutate(func(b []byte) []byte { clear(b[:snapshotHeader]); return b }), "bad magic"},
		"other format":    {mutate(func(b []byte) []byte { b[8] = 9; return b }), "format version 9"},
		"truncated body":  {good[:len(good)-7], "truncated"},
		"bit flip":        {mutate(func(b []byte) []byte { b[len(b)/2] ^= 0x10; return b }), ""},
		"trailing bytes":  {append(append([]byte(nil), good...), 1, 2, 3), "truncated"},
		"not a snapshot":  {[]byte(strings.Repeat("hello world\n", 10)), "bad magic"},
		"count too large": {mutate(func(b []byte) []byte { b[16]++; return b }), "record"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "snap")
			if err := os.WriteFile(p, c.data, 0o600); err != nil {
				t.Fatal(err)
			}
			s := New(Config{SweepInterval: -1})
			defer s.Close()
			_, err := LoadSnapshot(s, p, t0)
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("err = %v, want ErrBadSnapshot", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("err %q does not say %q", err, c.want)
			}
			if s.Len() != 0 {
				t.Fatalf("a refused snapshot restored %d keys", s.Len())
			}
			t.Log(err)
		})
	}
}

func TestSnapshotRefusesUnsafeFiles(t *testing.T) {
	path, _ := writeTestSnapshot(t)
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSnapshot(New(Config{SweepInterval: -1}), path, t0); !errors.Is(err, ErrBadSnapshot) || !strings.Contains(err.Error(), "writable") {
		t.Fatalf("world-writable: %v", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// Root can give the file away: another owner must be refused.
		if err := os.Chown(path, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		_, err := LoadSnapshot(New(Config{SweepInterval: -1}), path, t0)
		if !errors.Is(err, ErrBadSnapshot) || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Fatalf("foreign owner: %v", err)
		}
	} else {
		// Without root an unreadable file stands in for a foreign one.
		if err := os.Chmod(path, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadSnapshot(New(Config{SweepInterval: -1}), path, t0); err == nil || !errors.Is(err, os.ErrPermission) {
			t.Fatalf("unreadable: %v", err)
		}
	}
	if _, err := LoadSnapshot(New(Config{SweepInterval: -1}), filepath.Join(t.TempDir(), "missing"), t0); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
	dir := t.TempDir()
	if _, err := LoadSnapshot(New(Config{SweepInterval: -1}), dir, t0); !errors.Is(err, ErrBadSnapshot) {
		t.Fatalf("directory: %v", err)
	}
}

func TestWriteSnapshotDoesNotFollowPlantedTmp(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "snap")
	if err := os.Symlink(victim, path+".tmp"); err != nil {
		t.Fatal(err)
	}
	s := New(Config{SweepInterval: -1})
	defer s.Close()
	fill(t, s)
	if _, err := WriteSnapshot(s, path, t0); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep me" {
		t.Fatalf("symlink target overwritten: %q", b)
	}
	if _, err := WriteSnapshot(s, filepath.Join(dir, "no", "such", "dir"), t0); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}

func TestPersistentStore(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	path := filepath.Join(t.TempDir(), "snap")
	now := t0
	clock := func() int64 { return now }
	lim := algorithms.Limit{Requests: 5, Period: 3_600_000_000}
	hit := func(s backends.Store) algorithms.Result {
		t.Helper()
		op := &backends.Op{Key: "user", Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		if err := s.Apply(context.Background(), now, []*backends.Op{op}); err != nil {
			t.Fatal(err)
		}
		return op.Result
	}

	p, err := OpenPersistent(Config{SweepInterval: -1, Clock: clock}, path, -1, log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "none to restore") {
		t.Errorf("missing snapshot not reported:\n%s", logs.String())
	}
	for i := 0; i < 3; i++ {
		hit(p)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	now += 60_000_000
	p, err = OpenPersistent(Config{SweepInterval: -1, Clock: clock}, path, -1, log)
	if err != nil {
		t.Fatal(err)
	}
	if r := hit(p); r.Remaining != 1 {
		t.Fatalf("after restart: %+v", r)
	}
	hit(p)
	if r := hit(p); r.Allowed {
		t.Fatalf("sixth hit in the hour admitted: %+v", r)
	}
	p.Close()

	// A corrupt file is reported with its reason and ignored.
	logs.Reset()
	b, _ := os.ReadFile(path)
	b[len(b)-1] ^= 0xff
	os.WriteFile(path, b, 0o600)
	p, err = OpenPersistent(Config{SweepInterval: -1, Clock: clock}, path, -1, log)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "checksum") {
		t.Errorf("corrupt snapshot not reported:\n%s", logs.String())
	}
	if p.Len() != 0 {
		t.Fatalf("corrupt snapshot restored %d keys", p.Len())
	}
}

func BenchmarkWriteSnapshot100k(b *testing.B) {
	s := New(Config{SweepInterval: -1})
	defer s.Close()
	lim := algorithms.Limit{Requests: 100, Period: 3_600_000_000}
	for i := 0; i < 100_000; i++ {
		op := &backends.Op{Key: fmt.Sprintf("domain_user_%d", i), Algorithm: algorithms.TokenBucket, Limit: lim, Cost: 1}
		s.Apply(context.Background(), t0, []*backends.Op{op})
	}
	path := filepath.Join(b.TempDir(), "snap")
	for b.Loop() {
		if _, err := WriteSnapshot(s, path, t0); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPersistentPeriodic: the snapshot is written every interval while the store serves
// (Applies running meanwhile, under -race), each write a valid file a restart reads; a
// path that cannot be written fails the open, not the shutdown.
func TestPersistentPeriodic(t *testing.T) {
	var logs testutilBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	path := filepath.Join(t.TempDir(), "snap")
	clock := func() int64 { return t0 }
	p, err := OpenPersistent(Config{SweepInterval: -1, Clock: clock}, path, MinSnapshotInterval, log)
	if err != nil {
		t.Fatal(err)
	}
	lim := algorithms.Limit{Requests: 1 << 40, Period: 3_600_000_000}
	stop := make(chan struct{})
	served := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				served <- n
				return
			default:
			}
			op := &backends.Op{Key: fmt.Sprintf("k%d", n%50), Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
			if err := p.Apply(context.Background(), t0, []*backends.Op{op}); err != nil {
				t.Error(err)
			}
			n++
		}
	}()
	// Wait for three periodic writes: the first may have begun before any Apply.
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(logs.String(), "when=periodic") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("no periodic snapshots:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	n := <-served
	r := New(Config{SweepInterval: -1})
	defer r.Close()
	st, err := LoadSnapshot(r, path, t0)
	if err != nil || st.Restored == 0 {
		t.Fatalf("a periodic snapshot does not load: %+v %v", st, err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// The last snapshot, on Close, holds every hit.
	r2 := New(Config{SweepInterval: -1})
	defer r2.Close()
	if _, err := LoadSnapshot(r2, path, t0); err != nil {
		t.Fatal(err)
	}
	var total int64
	for k := 0; k < 50; k++ {
		op := &backends.Op{Key: fmt.Sprintf("k%d", k), Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 0}
		if err := r2.Apply(context.Background(), t0, []*backends.Op{op}); err != nil {
			t.Fatal(err)
		}
		total += lim.Requests - op.Result.Remaining
	}
	if total != int64(n) {
		t.Fatalf("the shutdown snapshot holds %d hits, %d were made", total, n)
	}

	for _, bad := range []string{filepath.Join(t.TempDir(), "no", "such", "dir", "snap"), t.TempDir()} {
		if _, err := OpenPersistent(Config{SweepInterval: -1}, bad, 0, log); err == nil || !strings.Contains(err.Error(), "memory snapshot") {
			t.Fatalf("%s: open succeeded or unclear error: %v", bad, err)
		}
	}
	if os.Geteuid() != 0 { // root writes anywhere
		ro := t.TempDir()
		os.Chmod(ro, 0o500)
		defer os.Chmod(ro, 0o700)
		if _, err := OpenPersistent(Config{SweepInterval: -1}, filepath.Join(ro, "snap"), 0, log); err == nil || !strings.Contains(err.Error(), "cannot write in "+ro) {
			t.Fatalf("read-only directory: %v", err)
		}
	}
}

// testutilBuffer is a goroutine-safe buffer (the periodic writer logs from its own
// goroutine).
type testutilBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *testutilBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *testutilBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
