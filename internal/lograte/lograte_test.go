package lograte

import (
	"sync"
	"testing"
	"time"
)

func TestOneLinePerInterval(t *testing.T) {
	l := New(10 * time.Second)
	t0 := time.Unix(1000, 0)
	if ok, held := l.Allow(t0); !ok || held != 0 {
		t.Fatalf("first line: ok=%v held=%d, want true 0", ok, held)
	}
	for i := 1; i <= 5; i++ {
		if ok, _ := l.Allow(t0.Add(time.Duration(i) * time.Second)); ok {
			t.Fatalf("line %d s after the first was allowed", i)
		}
	}
	if ok, held := l.Allow(t0.Add(10 * time.Second)); !ok || held != 5 {
		t.Fatalf("line after the interval: ok=%v held=%d, want true 5", ok, held)
	}
	if ok, _ := l.Allow(t0.Add(11 * time.Second)); ok {
		t.Fatal("the interval restarts at the last line allowed")
	}
}

func TestZeroValueAllowsEveryLine(t *testing.T) {
	var l Limiter
	now := time.Unix(1000, 0)
	for i := 0; i < 3; i++ {
		if ok, held := l.Allow(now.Add(time.Duration(i))); !ok || held != 0 {
			t.Fatalf("line %d: ok=%v held=%d", i, ok, held)
		}
	}
}

// TestConcurrentCallersShareOneLine: of many goroutines failing at the same instant,
// exactly one logs, and the next line accounts for every other one.
func TestConcurrentCallersShareOneLine(t *testing.T) {
	l := New(time.Second)
	now := time.Unix(1000, 0)
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for i := 0; i < 64; i++ {
		wg.Go(func() {
			if ok, _ := l.Allow(now); ok {
				mu.Lock()
				allowed++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if allowed != 1 {
		t.Fatalf("%d goroutines logged, want 1", allowed)
	}
	if ok, held := l.Allow(now.Add(time.Second)); !ok || held != 63 {
		t.Fatalf("next interval: ok=%v held=%d, want true 63", ok, held)
	}
}

func TestNPerInterval(t *testing.T) {
	l := NewN(3, time.Second)
	t0 := time.Unix(1000, 0)
	for i := 0; i < 3; i++ {
		if ok, _ := l.Allow(t0.Add(time.Duration(i) * time.Millisecond)); !ok {
			t.Fatalf("line %d of 3 in the window held back", i+1)
		}
	}
	for i := 0; i < 4; i++ {
		if ok, _ := l.Allow(t0.Add(500 * time.Millisecond)); ok {
			t.Fatal("a fourth line in the window was allowed")
		}
	}
	if ok, held := l.Allow(t0.Add(time.Second)); !ok || held != 4 {
		t.Fatalf("first line of the next window: ok=%v held=%d, want true 4", ok, held)
	}
}
