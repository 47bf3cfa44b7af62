package metrics

import (
	"fmt"
	"sync"
	"testing"
)

// TestKeyCap: keys are admitted up to the per-group and total bounds, then refused;
// admitted keys stay admitted; concurrent callers never exceed the bounds.
func TestKeyCap(t *testing.T) {
	c := NewKeyCap(3, 5)
	for i := range 3 {
		if !c.Admit("a", fmt.Sprint(i)) {
			t.Fatalf("a/%d refused", i)
		}
	}
	if c.Admit("a", "3") {
		t.Fatal("a/3 admitted past the per-group cap")
	}
	if !c.Admit("a", "1") {
		t.Fatal("an admitted key refused")
	}
	if !c.Admit("b", "x") || !c.Admit("b", "y") || c.Admit("b", "z") {
		t.Fatal("the total cap does not hold")
	}
	if c.Len() != 5 {
		t.Fatalf("Len %d", c.Len())
	}
	var wg sync.WaitGroup
	c = NewKeyCap(10, 50)
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				c.Admit(fmt.Sprint(g), fmt.Sprint(i))
			}
		})
	}
	wg.Wait()
	if c.Len() != 50 {
		t.Fatalf("%d keys admitted concurrently, want the cap 50", c.Len())
	}
	if p, tot := NewKeyCap(0, -1).Bounds(); p != DefaultMaxKeysPerRule || tot != DefaultMaxKeys {
		t.Fatalf("defaults %d %d", p, tot)
	}
}
