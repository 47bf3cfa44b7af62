package config

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func repoRoot(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Every example under config/ must load, as one Set.
func TestExampleConfigsLoad(t *testing.T) {
	s, err := testOptions(t).Load(filepath.Join(repoRoot(t), "config"))
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

// Directory loading: recursive, *.yaml and *.yml only, hidden names skipped, symlinked
// directories followed (once), file names as found under the given path.
func TestLoadDirectory(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), cfg("1"))
	writeFile(t, filepath.Join(dir, "nested", "deeper", "b.yml"), strings.Replace(cfg("2"), "domain: d", "domain: b", 1))
	writeFile(t, filepath.Join(dir, "README.md"), "not yaml")
	writeFile(t, filepath.Join(dir, "notes.txt"), "domain: [broken")
	writeFile(t, filepath.Join(dir, ".hidden.yaml"), "domain: [broken")
	writeFile(t, filepath.Join(dir, ".git", "x.yaml"), "domain: [broken")
	writeFile(t, filepath.Join(t.TempDir(), "unused"), "")
	other := t.TempDir()
	writeFile(t, filepath.Join(other, "c.yaml"), strings.Replace(cfg("3"), "domain: d", "domain: c", 1))
	if err := os.Symlink(other, filepath.Join(dir, "linked")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, filepath.Join(dir, "nested", "loop")); err != nil {
		t.Fatal(err)
	}
	s, err := testOptions(t).Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got := strings.Join(s.Domains(), ","); got != "b,c,d" {
		t.Errorf("Domains() = %s", got)
	}
	want := []string{filepath.Join(dir, "a.yaml"), filepath.Join(dir, "linked", "c.yaml"), filepath.Join(dir, "nested", "deeper", "b.yml")}
	if got := s.Files(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Files() = %v, want %v", got, want)
	}
	// A single file is loaded whatever its extension.
	s, err = testOptions(t).Load(filepath.Join(dir, "a.yaml"))
	if err != nil || strings.Join(s.Domains(), ",") != "d" {
		t.Errorf("Load(file) = %v, %v", s, err)
	}
	// An empty directory is a valid, empty set.
	s, err = testOptions(t).Load(t.TempDir())
	if err != nil || len(s.Domains()) != 0 {
		t.Errorf("Load(empty dir) = %v, %v", s, err)
	}
	if _, ok := s.Match("d", ents("k", "x")); ok {
		t.Error("empty set matched")
	}
}
