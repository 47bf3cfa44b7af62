package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type result struct {
	set *Set
	err error
}

func startWatch(t *testing.T, path string) (*Watcher, chan result) {
	t.Helper()
	ch := make(chan result, 16)
	w, err := Watch(context.Background(), path, 20*time.Millisecond, func(s *Set, err error) { ch <- result{s, err} })
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	t.Cleanup(func() { w.Close() })
	return w, ch
}

// next waits for the next reload result that satisfies ok (intermediate results of a
// multi-step file operation may come first).
func next(t *testing.T, ch chan result, what string, ok func(result) bool) result {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case r := <-ch:
			if ok(r) {
				return r
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func limitOf(s *Set, dom, key string) uint32 {
	r, ok := s.Match(dom, []Entry{{key, "x"}})
	if !ok || len(r.Limits) == 0 {
		return 0
	}
	return r.Limits[0].RequestsPerUnit
}

func cfg(rpu string) string {
	return "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: " + rpu + "}\n"
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// swapConfigMap does what the kubelet does: write a new timestamped directory, point a
// temporary symlink at it, and rename the symlink over ..data atomically.
func swapConfigMap(t *testing.T, dir, version string, files map[string]string) {
	t.Helper()
	ts := "..2024_01_01_00_00_00." + version
	for name, content := range files {
		writeFile(t, filepath.Join(dir, ts, name), content)
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestWatchConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	swapConfigMap(t, dir, "1", map[string]string{"limits.yaml": cfg("1")})
	w, ch := startWatch(t, dir)
	if got := limitOf(w.Current(), "d", "k"); got != 1 {
		t.Fatalf("initial limit %d", got)
	}
	if fs := w.Current().Files(); len(fs) != 1 || filepath.Base(fs[0]) != "limits.yaml" {
		t.Errorf("hidden ConfigMap internals were loaded: %v", fs)
	}
	old := w.Current()
	swapConfigMap(t, dir, "2", map[string]string{"limits.yaml": cfg("2")})
	r := next(t, ch, "reload after ..data swap", func(r result) bool { return r.err == nil && limitOf(r.set, "d", "k") == 2 })
	if w.Current() != r.set {
		t.Error("Current() is not the reloaded set")
	}
	if limitOf(old, "d", "k") != 1 {
		t.Error("the old set changed under its holder")
	}
}

func TestWatchInvalidKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "limits.yaml")
	writeFile(t, path, cfg("1"))
	w, ch := startWatch(t, dir)
	good := w.Current()

	// A half-written file: truncated mid-mapping.
	writeFile(t, path, "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: sec")
	r := next(t, ch, "failed reload", func(r result) bool { return r.err != nil })
	var le *LoadError
	if r.set != nil || !errors.As(r.err, &le) || !strings.Contains(le.Error(), "limits.yaml") {
		t.Errorf("failed reload result: %+v", r)
	}
	if w.Current() != good {
		t.Error("a failed reload replaced the current set")
	}

	// A second file that is valid on its own but clashes: still the whole set is rejected.
	writeFile(t, path, cfg("5"))
	writeFile(t, filepath.Join(dir, "sub", "other.yml"), cfg("6"))
	r = next(t, ch, "duplicate domain rejected", func(r result) bool {
		return r.err != nil && strings.Contains(r.err.Error(), "duplicate domain")
	})
	if w.Current() != good {
		t.Error("a set with a duplicate domain was swapped in")
	}

	// Fixing it is picked up (the new subdirectory is watched too).
	writeFile(t, filepath.Join(dir, "sub", "other.yml"), strings.Replace(cfg("6"), "domain: d", "domain: e", 1))
	r = next(t, ch, "recovered reload", func(r result) bool { return r.err == nil })
	if limitOf(r.set, "d", "k") != 5 || limitOf(r.set, "e", "k") != 6 || w.Current() != r.set {
		t.Errorf("recovered set: %v", r.set.Domains())
	}
}

// A single file edited the way editors save: write a temporary file, rename it over.
func TestWatchFileRenameOnSave(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "limits.yaml")
	writeFile(t, path, cfg("1"))
	w, ch := startWatch(t, path)
	tmp := filepath.Join(dir, ".limits.yaml.swp")
	writeFile(t, tmp, cfg("7"))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	next(t, ch, "reload after rename", func(r result) bool { return r.err == nil && limitOf(r.set, "d", "k") == 7 })
	if limitOf(w.Current(), "d", "k") != 7 {
		t.Error("Current() not updated")
	}
}

func TestWatchReloadAndClose(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "limits.yaml"), cfg("1"))
	w, ch := startWatch(t, dir)
	w.Reload()
	r := next(t, ch, "explicit reload", func(r result) bool { return true })
	if r.err != nil || limitOf(r.set, "d", "k") != 1 {
		t.Errorf("reload: %+v", r)
	}
	if err := w.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	w.Close() // twice is fine
	w.Reload()
	if w.Current() == nil {
		t.Error("Current() after Close is nil")
	}
}

func TestWatchInitialFailure(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "limits.yaml"), "domain: d\nbogus: 1\n")
	_, err := Watch(context.Background(), dir, 0, nil)
	var le *LoadError
	if !errors.As(err, &le) {
		t.Errorf("Watch on a bad config: %v", err)
	}
}

func TestWatchStopsWithContext(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "limits.yaml"), cfg("1"))
	ctx, cancel := context.WithCancel(context.Background())
	w, err := Watch(ctx, dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-w.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("watcher did not stop with its context")
	}
	w.Close()
}

// TestChmodReloads: a chmod of the watched file alone reloads it, so a file that could
// not be read is picked up once it is made readable (internal/reload's
// TestChmodReloads shows the refused-then-readable sequence).
func TestChmodReloads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "limits.yaml")
	writeFile(t, path, cfg("5"))
	_, ch := startWatch(t, path)
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	next(t, ch, "a reload after a chmod", func(r result) bool { return r.err == nil })
}
