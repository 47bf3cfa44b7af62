package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"
)

// soak runs halt-soak in-process (it builds and starts the real halt-envoy) and decodes
// its JSON report.
func soak(t *testing.T, args ...string) *Report {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append(args, "--json"), &out, &errb, os.Getenv)
	var rep Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("exit %d, no report (%v):\n%s\n%s", code, err, out.String(), errb.String())
	}
	t.Logf("report: %s\n%s", out.String(), errb.String())
	if code != 0 {
		t.Fatalf("halt-soak exit %d: %v", code, rep.Failures)
	}
	return &rep
}

// TestSoakShort exercises the whole soak path for a few seconds: mixed traffic, over-limit
// answers, InvalidArgument for the invalid share only, samples, and a clean SIGTERM exit.
func TestSoakShort(t *testing.T) {
	rep := soak(t, "--duration", "4s", "--sample", "1s", "--rate", "400", "--concurrency", "4")
	if rep.Calls < 400 {
		t.Errorf("only %d calls", rep.Calls)
	}
	if rep.OverLimit == 0 {
		t.Error("no over-limit answers: the mix must exercise the deny path")
	}
	if rep.Codes["InvalidArgument"] == 0 || rep.Codes["OK"] == 0 {
		t.Errorf("codes %v: want both OK and InvalidArgument", rep.Codes)
	}
	if len(rep.Unexpected) != 0 {
		t.Errorf("unexpected results: %v", rep.Unexpected)
	}
	if len(rep.Samples) < 3 || rep.Samples[0].RSSMiB <= 0 || rep.Samples[0].Goroutines <= 0 {
		t.Errorf("samples %+v", rep.Samples)
	}
	if !rep.ExitClean {
		t.Error("no clean exit")
	}
}

// TestSoakLong is the CI soak: HALT_SOAK=60s (any Go duration) runs it for that long.
func TestSoakLong(t *testing.T) {
	v := os.Getenv("HALT_SOAK")
	if v == "" {
		t.Skip("HALT_SOAK not set (e.g. HALT_SOAK=60s runs a one-minute soak)")
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("HALT_SOAK=%q: %v", v, err)
	}
	rep := soak(t, "--duration", d.String())
	t.Logf("%d calls, p99 drift %+.1f%%, RSS growth %+.1f MiB", rep.Calls, rep.P99DriftPct, rep.RSSGrowthMiB)
}

func TestParseDefaults(t *testing.T) {
	env := map[string]string{"REDIS_ADDR": "127.0.0.1:7777"}
	o, err := parse(nil, &bytes.Buffer{}, func(k string) string { return env[k] })
	if err != nil || o.Store != "redis://127.0.0.1:7777/0" {
		t.Fatalf("%+v %v", o, err)
	}
	o, err = parse(nil, &bytes.Buffer{}, func(string) string { return "" })
	if err != nil || o.Store != "memory://" {
		t.Fatalf("%+v %v", o, err)
	}
	if _, err := parse([]string{"--duration", "0s"}, &bytes.Buffer{}, os.Getenv); err == nil {
		t.Fatal("zero duration accepted")
	}
	if got := redactStore("redis://u:pw@h:1/0"); got != "redis://u:xxxxx@h:1/0" {
		t.Fatalf("redactStore: %s", got)
	}
}
