package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

type fakeMem struct{ n, ev int }

func (f fakeMem) Len() int       { return f.n }
func (f fakeMem) Evicted() int64 { return int64(f.ev) }

func TestMemoryMetricsReadTheStore(t *testing.T) {
	m := New(func() MemoryStore { return fakeMem{n: 7, ev: 3} })
	if got := testutil.ToFloat64(m.MemoryKeys); got != 7 {
		t.Fatalf("keys %v", got)
	}
	if got := testutil.ToFloat64(m.MemoryEvictions); got != 3 {
		t.Fatalf("evictions %v", got)
	}
	// Another backend: zeros, no panic.
	if got := testutil.ToFloat64(New(nil).MemoryEvictions); got != 0 {
		t.Fatalf("no store: %v", got)
	}
	if got := testutil.ToFloat64(New(func() MemoryStore { return nil }).MemoryKeys); got != 0 {
		t.Fatalf("nil store: %v", got)
	}
}
