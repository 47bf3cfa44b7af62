package metrics

import (
	"testing"
)

type fakeMem struct{ n, ev int }

func (f fakeMem) Len() int       { return f.n }
func (f fakeMem) Evicted() int64 { return int64(f.ev) }

func value(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			mt := mf.GetMetric()[0]
			if g := mt.GetGauge(); g != nil {
				return g.GetValue()
			}
			return mt.GetCounter().GetValue()
		}
	}
	t.Fatalf("%s not registered", name)
	return 0
}

func TestMemoryMetricsReadTheStore(t *testing.T) {
	m := New(func() MemoryStore { return fakeMem{n: 7, ev: 3} })
	if got := value(t, m, "halt_memory_keys"); got != 7 {
		t.Fatalf("keys %v", got)
	}
	if got := value(t, m, "halt_memory_evictions_total"); got != 3 {
		t.Fatalf("evictions %v", got)
	}
	// Another backend: zeros, no panic.
	if got := value(t, New(nil), "halt_memory_evictions_total"); got != 0 {
		t.Fatalf("no store: %v", got)
	}
	if got := value(t, New(func() MemoryStore { return nil }), "halt_memory_keys"); got != 0 {
		t.Fatalf("nil store: %v", got)
	}
}

func TestStoreEvictions(t *testing.T) {
	m := New(nil)
	n := uint64(0)
	m.WatchStoreEvictions("redis", func() uint64 { return n })
	n = 42
	if got := value(t, m, "halt_store_server_evictions_total"); got != 42 {
		t.Fatalf("evictions %v, want 42", got)
	}
}

// TestDiscard checks that metrics built for nobody have every collector (code that
// counts never checks for nil) and stay off the runtime collectors of a served registry.
func TestDiscard(t *testing.T) {
	m := Discard()
	m.Decisions.WithLabelValues("d", "r", ResultOK).Inc()
	m.ShapingDelay.Observe(0.1)
	m.ConfigLastReloadSuccess.Set(0)
	m.WatchStoreEvictions("redis", func() uint64 { return 1 })
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if name := mf.GetName(); len(name) < 5 || name[:5] != "halt_" {
			t.Errorf("Discard registers %s", name)
		}
	}
	if got := value(t, m, "halt_decisions_total"); got != 1 {
		t.Fatalf("decisions %v", got)
	}
	// Two of them do not share collectors.
	if got := value(t, Discard(), "halt_config_last_reload_successful"); got != 1 {
		t.Fatalf("a second Discard shares state: %v", got)
	}
}
