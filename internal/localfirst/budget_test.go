package localfirst

import "testing"

// TestShareAndBudget: the budget maths, exactly (docs/consistency.md works the same
// example: 10,000 a minute, 3 replicas, max_overshoot 0.01).
func TestShareAndBudget(t *testing.T) {
	cases := []struct {
		limit, remaining int64
		replicas         int
		overshoot        float64
		share, budget    int64
	}{
		// Far from the limit the Share decides: 1% of 10,000 split three ways.
		{10000, 10000, 3, 0.01, 33, 33},
		{10000, 8000, 3, 0.01, 33, 33},
		// remaining / (3 x 2) = 33.3: the two bounds meet.
		{10000, 200, 3, 0.01, 33, 33},
		{10000, 198, 3, 0.01, 33, 33},
		// Near the limit the remaining decides, and shrinks the budget with it.
		{10000, 150, 3, 0.01, 33, 25},
		{10000, 12, 3, 0.01, 33, 2},
		{10000, 6, 3, 0.01, 33, 1},
		// Below replicas x Safety the budget is 0: every decision goes to the store.
		{10000, 5, 3, 0.01, 33, 0},
		{10000, 0, 3, 0.01, 33, 0},
		{10000, -4, 3, 0.01, 33, 0},
		// A limit too small for the bound: decided exactly, always.
		{99, 99, 1, 0.01, 0, 0},
		{100, 100, 1, 0.01, 1, 1},
		{300, 300, 3, 0.01, 1, 1},
		{299, 299, 3, 0.01, 0, 0},
		// One replica (or none counted: this one) keeps the whole bound.
		{10000, 10000, 1, 0.01, 100, 100},
		{10000, 10000, 0, 0.01, 100, 100},
		// A large bound on few replicas: the fair split decides.
		{1000, 1000, 2, 0.5, 250, 250},
		{1000, 400, 2, 0.5, 250, 100},
		// Out-of-range bounds (refused at validate) grant nothing rather than too much.
		{1000, 1000, 1, 0, 0, 0},
		{1000, 1000, 1, 1, 0, 0},
		{0, 0, 1, 0.5, 0, 0},
	}
	for _, c := range cases {
		if got := Share(c.limit, c.replicas, c.overshoot); got != c.share {
			t.Errorf("Share(%d, %d, %g) = %d, want %d", c.limit, c.replicas, c.overshoot, got, c.share)
		}
		if got := Budget(c.limit, c.remaining, c.replicas, c.overshoot); got != c.budget {
			t.Errorf("Budget(%d, %d, %d, %g) = %d, want %d", c.limit, c.remaining, c.replicas, c.overshoot, got, c.budget)
		}
	}
}

// TestBudgetNeverExceedsShare: whatever the store says remains, N replicas together
// never hold more than maxOvershoot x limit, the invariant the bound rests on.
func TestBudgetNeverExceedsShare(t *testing.T) {
	for _, limit := range []int64{1, 7, 100, 999, 10000, 1 << 40} {
		for _, n := range []int{1, 2, 3, 7, 64} {
			for _, eps := range []float64{0.001, 0.01, 0.1, 0.5, 0.999} {
				for _, rem := range []int64{-1, 0, 1, limit / 3, limit, 2 * limit} {
					b := Budget(limit, rem, n, eps)
					if b < 0 || float64(b)*float64(n) > eps*float64(limit) || b > Share(limit, n, eps) {
						t.Fatalf("Budget(%d, %d, %d, %g) = %d: %d replicas would hold more than %g of the limit", limit, rem, n, eps, b, n, eps)
					}
					if rem > 0 && b*int64(n)*Safety > rem {
						t.Fatalf("Budget(%d, %d, %d, %g) = %d: more than remaining / (replicas x Safety)", limit, rem, n, eps, b)
					}
				}
			}
		}
	}
}

func TestOutageShare(t *testing.T) {
	cases := []struct {
		limit, last, restored int64
		replicas              int
		want                  int64
	}{
		{10000, 3000, 0, 3, 1000},
		{10000, 3000, 600, 3, 1200},
		{10000, 3000, 9000, 3, 3333}, // never more than a part of the whole limit
		{10000, 0, 0, 3, 0},
		{10000, -5, 0, 1, 0},
		{10, 10, 0, 0, 10},
	}
	for _, c := range cases {
		if got := OutageShare(c.limit, c.last, c.restored, c.replicas); got != c.want {
			t.Errorf("OutageShare(%d, %d, %d, %d) = %d, want %d", c.limit, c.last, c.restored, c.replicas, got, c.want)
		}
	}
}
