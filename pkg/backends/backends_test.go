package backends

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

func TestTTLNeverWraps(t *testing.T) {
	for _, us := range []int64{0, 1, 999_999, 1 << 40, 10_000_000_000_000_000, 1 << 62, 1<<63 - 1} {
		if d := TTL(us); d < time.Second || (us > 1<<40 && d < 100*365*24*time.Hour) {
			t.Errorf("TTL(%d) = %v", us, d)
		}
	}
}

func TestStateRoundTrip(t *testing.T) {
	in := algorithms.State{A: -5, B: 1 << 52, C: 7, D: 1893456000000000, Log: []algorithms.Entry{{At: 10, Cost: 1}, {At: 25, Cost: 3}}}
	b := EncodeState(nil, &in)
	var out algorithms.State
	if err := DecodeState(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.A != in.A || out.B != in.B || out.C != in.C || out.D != in.D || len(out.Log) != 2 || out.Log[1] != in.Log[1] {
		t.Fatalf("round trip: %+v", out)
	}
	for _, bad := range [][]byte{{9}, b[:len(b)-1], append(append([]byte{}, b...), 0)} {
		if err := DecodeState(bad, &out); err == nil {
			t.Errorf("corrupt %x accepted", bad)
		}
	}
}

func TestBackoff(t *testing.T) {
	ctx := context.Background()
	b := Backoff{Free: 2, Floor: time.Millisecond, Step: time.Millisecond, MaxSteps: 3}
	if err := b.Wait(ctx, 1); err != nil {
		t.Fatal(err) // below Free: at once
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.Wait(cancelled, 5); err != context.Canceled {
		t.Fatalf("Wait on an ended context: %v, want context.Canceled", err)
	}
	if err := b.Wait(ctx, 5); err != nil {
		t.Fatal(err)
	}
}

func TestInject(t *testing.T) {
	var src strings.Builder
	for a := algorithms.Algorithm(1); a.Valid(); a++ {
		fmt.Fprintf(&src, "local A%d = 0 -- halt:%s\n", a, a)
	}
	src.WriteString("  m CONSTANT bigint := -1; -- halt:max_count  \nx = 5 -- not a marker\n")
	src.WriteString("IF alg = 0 /*halt:calendar*/ OR alg = 0/* halt:penalty */ THEN o := i * 0 /*halt:max_ladder*/;\n")
	out, err := Inject(src.String(), WireValues())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"local A1 = 1 -- halt:fixed_window\n", "local A7 = 7 -- halt:penalty\n",
		"m CONSTANT bigint := 4503599627370496; -- halt:max_count", "x = 5 -- not a marker",
		"IF alg = 6 /*halt:calendar*/ OR alg = 7/* halt:penalty */ THEN o := i * 8 /*halt:max_ladder*/;"} {
		if !strings.Contains(out, want) {
			t.Errorf("injected script lacks %q:\n%s", want, out)
		}
	}
	for _, bad := range []string{"y = 0 -- halt:no_such_value\n", "y = 0 /*halt:no_such_value*/ + 1\n"} {
		if _, err := Inject(src.String()+bad, WireValues()); err == nil || !strings.Contains(err.Error(), "no_such_value") {
			t.Errorf("unknown marker %q: %v", bad, err)
		}
	}
	lost := strings.ReplaceAll(src.String(), "halt:calendar", "calendar")
	if _, err := Inject(lost, WireValues()); err == nil || !strings.Contains(err.Error(), "calendar") {
		t.Errorf("a lost algorithm marker: %v", err)
	}
}
