package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/halt"
)

type fixed time.Time

func (f fixed) Now() time.Time { return time.Time(f) }

// TestDemo runs the example's demo against its real server (on a free loopback port)
// with the API's clock stopped, and wants what docs/library.md shows.
// With -config, the same file read from a directory answers the same.
func TestDemo(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "shop.yaml"), []byte(shopYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []halt.Config{halt.YAML(shopYAML), halt.Load(dir)} {
		demoOnce(t, cfg)
	}
}

func demoOnce(t *testing.T, cfg halt.Config) {
	t.Helper()
	var out bytes.Buffer
	if err := run(cfg, fixed(time.Date(2030, 1, 31, 23, 0, 0, 0, time.UTC)), false, "127.0.0.1:0", &out); err != nil {
		t.Fatal(err)
	}
	want := `-- the quick start: PUBLIC_API per client address
public                   200  hello                                  RateLimit: "PUBLIC_API";r=99;t=1
-- health checks are exempt: no counting, no headers
health                   200  ok                                     RateLimit: 
-- initech (pro): a token bucket of 2 a minute
initech 1                200  orders of initech                      RateLimit: "pro";r=1;t=30
initech 2                200  orders of initech                      RateLimit: "pro";r=0;t=30
initech 3                429  rate limit exceeded                    RateLimit: "pro";r=0;t=30
-- acme (free): 3 requests a month; two refusals lock it out
acme 1                   200  orders of acme                         RateLimit: "quota:monthly";r=2;t=3600
acme 2                   200  orders of acme                         RateLimit: "quota:monthly";r=1;t=3600
acme 3                   200  orders of acme                         RateLimit: "quota:monthly";r=0;t=3600
acme 4 (quota)           429  quota exhausted for this period        RateLimit: "quota:monthly";r=0;t=3600
acme 5 (quota)           429  quota exhausted for this period        RateLimit: "quota:monthly";r=0;t=3600
acme 6 (locked out)      403  locked out after repeated violations   RateLimit: 
`
	if got := out.String(); got != want {
		t.Fatalf("demo printed:\n%s\nwant:\n%s", got, want)
	}
}
