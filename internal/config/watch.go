package config

import (
	"context"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/halt-envoy/halt-envoy/internal/reload"
)

// DefaultDebounce is the quiet time Watch waits after a file change before reloading.
const DefaultDebounce = 300 * time.Millisecond

// Watcher keeps the current Set of a file or directory, reloading it on changes.
type Watcher struct {
	*reload.Watcher[Set]
}

// Watch loads path, then reloads it whenever a file in it changes (fsnotify on the
// directory, so Kubernetes ConfigMap symlink swaps and editors' rename-on-save are seen)
// and whenever Reload is called. Changes are debounced (debounce <= 0 means
// DefaultDebounce). Each reload validates the whole Set before swapping it in atomically;
// on failure the last good Set stays current. onResult (may be nil) is called after every
// reload, from one goroutine, with the new Set or the error; the initial load's result is
// Watch's own. The watcher stops when ctx is done or Close is called.
func Watch(ctx context.Context, path string, debounce time.Duration, onResult func(*Set, error)) (*Watcher, error) {
	return Options{}.Watch(ctx, path, debounce, onResult)
}

// Watch is the package's Watch with o's options.
func (o Options) Watch(ctx context.Context, path string, debounce time.Duration, onResult func(*Set, error)) (*Watcher, error) {
	w, err := o.watchFiles(ctx, path, debounce, o.parseWith, onResult)
	if err != nil {
		return nil, err
	}
	return &Watcher{w}, nil
}

// watchFiles is Watch with the step from the files read to a Set given: build gets the
// files and the problems of reading them.
func (o Options) watchFiles(ctx context.Context, path string, debounce time.Duration, build func(map[string][]byte, []Problem) (*Set, error), onResult func(*Set, error)) (*reload.Watcher[Set], error) {
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	// The first load tells a file from a directory (a directory load lists its dirs);
	// only the loop goroutine runs later loads, so the flags need no lock.
	first, fileMode := true, false
	load := func() (*Set, []string, error) {
		files, dirs, problems := o.readFiles(path)
		var s *Set
		var err error
		if files == nil {
			err = &LoadError{Problems: problems}
		} else {
			s, err = build(files, problems)
		}
		if first {
			first, fileMode = false, len(dirs) == 0
		}
		if fileMode { // a file: watch its directory
			dirs = []string{filepath.Dir(path)}
		}
		return s, dirs, err
	}
	// Every kind of event counts, chmod included: a chmod can make a file that could not
	// be read readable again, and the reload is debounced and keeps the last good set.
	relevant := func(ev fsnotify.Event) bool {
		if !fileMode {
			return true
		}
		// The file itself, or a ConfigMap swap in its directory (the file is a symlink into ..data).
		base := filepath.Base(ev.Name)
		return base == filepath.Base(path) || base == "..data"
	}
	return reload.Watch(ctx, load, debounce, relevant, onResult)
}
