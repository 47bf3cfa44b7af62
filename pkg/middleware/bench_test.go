package middleware_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"syscall"
	"testing"

	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
	"github.com/halt-envoy/halt-envoy/pkg/halt"
	"github.com/halt-envoy/halt-envoy/pkg/middleware"
)

func BenchmarkMiddleware(b *testing.B) {
	store := memory.New(memory.Config{SweepInterval: -1})
	defer store.Close()
	empty := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	limited := middleware.MustLimit(store, halt.Preset("PUBLIC_API"))(empty)
	addrs := make([]string, 1<<16)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}).String() + ":40000"
	}
	for _, c := range []struct {
		name string
		h    http.Handler
	}{{"empty", empty}, {"public_api", limited}} {
		b.Run(c.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, "/v1/items", nil)
			b.ReportAllocs()
			i := 0
			cpu0 := cpuTime(b)
			for b.Loop() {
				req.RemoteAddr = addrs[i&(len(addrs)-1)]
				i++
				w := httptest.NewRecorder()
				c.h.ServeHTTP(w, req)
				if w.Code != http.StatusNoContent {
					b.Fatalf("status %d", w.Code)
				}
			}
			// The process's CPU time per request: on a machine shared with other work the
			// wall time per op measures the queue for a core, this does not.
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the process's user and system CPU time so far, in nanoseconds.
func cpuTime(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
