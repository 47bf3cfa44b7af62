package memory

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// TestTableSizes pins the sizes the memory figure rests on.
func TestTableSizes(t *testing.T) {
	if n := unsafe.Sizeof(entry{}); n != 104 {
		t.Errorf("entry is %d bytes, want 104", n)
	}
	if n := unsafe.Sizeof(shard{}); n != 128 {
		t.Errorf("shard is %d bytes, want 128 (two cache lines)", n)
	}
}

// TestTableChurn inserts, deletes and re-inserts keys of every length (empty, inline,
// exactly inlineKey, longer) in a store small enough to rehash often, and checks each
// key's own state, the count and what Range enumerates.
func TestTableChurn(t *testing.T) {
	s := New(Config{SweepInterval: -1})
	defer s.Close()
	key := func(i int) string {
		switch i % 4 {
		case 0:
			return strconv.Itoa(i)
		case 1:
			return strings.Repeat("k", inlineKey-len(strconv.Itoa(i))) + strconv.Itoa(i) // exactly inlineKey
		case 2:
			return strings.Repeat("long", 20) + strconv.Itoa(i) // in shard.long
		}
		return "x|" + strconv.Itoa(i)
	}
	lim := algorithms.Limit{Requests: 1000, Period: 3_600_000_000}
	now := int64(1_000_000)
	hit := func(k string, cost int64) algorithms.Result {
		op := &backends.Op{Key: k, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: cost}
		if err := s.Apply(context.Background(), now, []*backends.Op{op}); err != nil {
			t.Fatal(err)
		}
		return op.Result
	}
	const n = 5000
	for i := range n {
		hit(key(i), int64(i%7+1))
	}
	if err := s.Delete(context.Background(), ""); err != nil { // absent: a no-op
		t.Fatal(err)
	}
	for i := 0; i < n; i += 2 {
		if err := s.Delete(context.Background(), key(i)); err != nil {
			t.Fatal(err)
		}
	}
	if s.Len() != n/2 {
		t.Fatalf("len %d after deleting half, want %d", s.Len(), n/2)
	}
	for i := range n {
		// A deleted key starts again from zero; a kept one adds to what it had.
		want := int64(1000 - (i%7 + 1))
		if i%2 == 1 {
			want -= int64(i%7 + 1)
		}
		if r := hit(key(i), int64(i%7+1)); r.Remaining != want {
			t.Fatalf("key %d (%q): remaining %d, want %d", i, key(i), r.Remaining, want)
		}
	}
	hit("", 1) // the empty key is a key like any other
	seen := map[string]bool{}
	s.Range(now, func(k string, st *algorithms.State, expires int64) bool {
		if seen[k] {
			t.Errorf("Range gave %q twice", k)
		}
		seen[k] = true
		return true
	})
	if len(seen) != n+1 || !seen[""] || !seen[key(2)] || !seen[key(1)] || s.Len() != n+1 {
		t.Errorf("Range saw %d keys (len %d), want %d", len(seen), s.Len(), n+1)
	}
	if _, ok := s.Peek(key(6), now); !ok {
		t.Errorf("Peek misses a long key")
	}
	if n := s.Sweep(now + 3_600_000_001); n != len(seen) || s.Len() != 0 {
		t.Errorf("swept %d, %d left", n, s.Len())
	}
	for i := range s.shards {
		if sh := &s.shards[i]; sh.live != 0 || len(sh.long) != 0 || len(sh.free) != int(sh.used) {
			t.Errorf("shard %d: live %d, long keys %d, free %d of %d slots", i, sh.live, len(sh.long), len(sh.free), sh.used)
		}
	}
}

// TestTableSlidingLog keeps sliding logs beside the entries and frees them with the key.
func TestTableSlidingLog(t *testing.T) {
	s := New(Config{SweepInterval: -1, MaxKeys: numShards})
	defer s.Close()
	lim := algorithms.Limit{Requests: 3, Period: 1_000_000}
	for i := range 200 {
		op := &backends.Op{Key: "log" + strconv.Itoa(i), Algorithm: algorithms.SlidingWindow, Limit: lim, Cost: 1}
		for j := range 4 {
			if err := s.Apply(context.Background(), int64(1_000_000+j), []*backends.Op{op}); err != nil {
				t.Fatal(err)
			}
			if want := j < 3; op.Result.Allowed != want {
				t.Fatalf("key %d call %d: allowed %v", i, j, op.Result.Allowed)
			}
		}
	}
	logs := 0
	for i := range s.shards {
		logs += len(s.shards[i].logs)
	}
	if logs != s.Len() || s.Len() > 2*numShards {
		t.Errorf("%d logs for %d keys", logs, s.Len())
	}
}

// TestApplyAllocations: deciding on a key the store holds allocates nothing, and a new
// key of up to inlineKey bytes nothing either, on average, once its shard has freed
// slots (the key is copied into its entry; an index rebuilt now and then is amortised).
func TestApplyAllocations(t *testing.T) {
	s := New(Config{SweepInterval: -1})
	defer s.Close()
	lim := algorithms.Limit{Requests: 1_000_000, Period: 1_000_000, Burst: 1_000_000}
	op := &backends.Op{Key: "bench|user=u1|@token_bucket:1000000", Algorithm: algorithms.TokenBucket, Limit: lim, Cost: 1}
	ops := []*backends.Op{op}
	now := int64(1_700_000_000_000_000)
	if err := s.Apply(context.Background(), now, ops); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(1000, func() {
		now++
		_ = s.Apply(context.Background(), now, ops)
	}); n != 0 {
		t.Errorf("a decision on a held key allocates %v times", n)
	}
	keys := make([]string, 2000)
	for i := range keys {
		keys[i] = "bench|user=n" + strconv.Itoa(i)
	}
	for _, k := range keys[:1000] { // grow the blocks and indexes first
		op.Key = k
		_ = s.Apply(context.Background(), now, ops)
	}
	for _, k := range keys[:1000] {
		_ = s.Delete(context.Background(), k)
	}
	i := 1000
	if n := testing.AllocsPerRun(500, func() {
		op.Key = keys[i]
		i++
		_ = s.Apply(context.Background(), now, ops)
	}); n != 0 {
		t.Errorf("a new key into freed room allocates %v times", n)
	}
}
