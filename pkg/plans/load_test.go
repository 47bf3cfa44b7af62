package plans

import (
	"path/filepath"
	"runtime"
	"testing"
)

func repoRoot(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Every example under config/ must load, as one Set.
func TestExampleConfigsLoad(t *testing.T) {
	s, err := Load(filepath.Join(repoRoot(t), "config"))
	if err != nil {
		t.Fatalf("Load(config): %v", err)
	}
	if len(s.Domains()) == 0 {
		t.Fatal("no domains in config/")
	}
	r, ok := s.Match("edge_proxy", ents("generic_key", "api", "path", "/api/v1/search?q=1"))
	if !ok || r.Name != "api_search" || r.Limits[0].Params.Burst != 40 {
		t.Errorf("example search rule: %+v", r)
	}
}
