package reload

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestReloadKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "v")
	os.WriteFile(file, []byte("1"), 0o644)
	load := func() (*string, []string, error) {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, []string{dir}, err
		}
		if string(b) == "bad" {
			return nil, []string{dir}, errors.New("bad value")
		}
		s := string(b)
		return &s, []string{dir}, nil
	}
	results := make(chan error, 16)
	w, err := Watch(context.Background(), load, 10*time.Millisecond, nil, func(_ *string, err error) { results <- err })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	wait := func() error {
		select {
		case err := <-results:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("no reload")
			return nil
		}
	}
	os.WriteFile(file, []byte("bad"), 0o644)
	if err := wait(); err == nil {
		t.Fatal("bad value accepted")
	}
	if got := *w.Current(); got != "1" {
		t.Fatalf("current %q after a failed reload, want the last good 1", got)
	}
	os.WriteFile(file, []byte("2"), 0o644)
	for wait() != nil {
	}
	if got := *w.Current(); got != "2" {
		t.Fatalf("current %q", got)
	}
	// Reload on demand (SIGHUP) without a file change.
	w.Reload()
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	w.Close()
	select {
	case <-w.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
}

func TestFirstLoadError(t *testing.T) {
	_, err := Watch(context.Background(), func() (*int, []string, error) { return nil, nil, errors.New("nope") }, 0, nil, nil)
	if err == nil {
		t.Fatal("first load error swallowed")
	}
}

// TestChmodReloads: a chmod alone triggers a reload. A file that could not be read
// (mode 0) fails to load and the last good value stays; the chmod that makes it
// readable again must bring its value in, with no write to notice. The loader checks
// the mode itself, so the test means the same as root (who reads any file).
func TestChmodReloads(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "v")
	if err := os.WriteFile(file, []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	load := func() (*string, []string, error) {
		fi, err := os.Stat(file)
		if err != nil {
			return nil, []string{dir}, err
		}
		if fi.Mode().Perm()&0o444 == 0 {
			return nil, []string{dir}, errors.New("permission denied")
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, []string{dir}, err
		}
		s := string(b)
		return &s, []string{dir}, nil
	}
	results := make(chan error, 16)
	w, err := Watch(context.Background(), load, 10*time.Millisecond, nil, func(_ *string, err error) { results <- err })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	wait := func(want bool) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case err := <-results:
				if (err == nil) == want {
					return
				}
			case <-deadline:
				t.Fatalf("no reload with success=%v after a chmod", want)
			}
		}
	}
	// A new value arrives unreadable (written with mode 0, renamed in): its reload fails.
	tmp := filepath.Join(dir, ".v.tmp")
	if err := os.WriteFile(tmp, []byte("2"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	wait(false)
	if got := *w.Current(); got != "1" {
		t.Fatalf("current %q, want the last good 1", got)
	}
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	wait(true)
	if got := *w.Current(); got != "2" {
		t.Fatalf("current %q after the chmod, want 2", got)
	}
}
