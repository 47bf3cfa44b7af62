package authz

import (
	"context"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/reload"
)

// Watcher keeps the current authz config, reloading it when the config file, its API
// key file or a GraphQL schema it names changes (their directories are watched, so
// editors' rename-on-save and Kubernetes ConfigMap/Secret symlink swaps are seen; other
// files there are not its). A config that fails to load never
// replaces the current one.
type Watcher struct {
	*reload.Watcher[Config]
}

// Watch loads path and keeps reloading it until ctx is done or Close is called.
// onResult is called after every reload (not the first load, whose error Watch returns).
// rules (may be nil) is the current rate-limit config: every load is resolved against
// it (Config.Resolve), so a file naming what that config does not define is refused
// and the last good one stays.
func Watch(ctx context.Context, path string, debounce time.Duration, rules func() *config.Set, onResult func(*Config, error)) (*Watcher, error) {
	return Caps{}.Watch(ctx, path, debounce, rules, onResult)
}

// Watch is the package's Watch under cp.
func (cp Caps) Watch(ctx context.Context, path string, debounce time.Duration, rules func() *config.Set, onResult func(*Config, error)) (*Watcher, error) {
	if debounce <= 0 {
		debounce = 300 * time.Millisecond
	}
	// The files the config reads (the last load's; the file itself always): a change to
	// another file of a watched directory (a log written beside the config) must not
	// reload it, or a server logging there reloads for ever, each reload's log line the
	// next change, and drops its persisted-query cache each time. Only the loop goroutine
	// runs load and relevant after the first load, so files needs no lock.
	files := map[string]bool{filepath.Clean(path): true}
	load := func() (*Config, []string, error) {
		cfg, err := cp.LoadConfig(path)
		dirs := []string{filepath.Dir(path)}
		if cfg != nil {
			files = map[string]bool{filepath.Clean(path): true}
			if cfg.KeysFile() != "" {
				dirs = append(dirs, filepath.Dir(cfg.KeysFile()))
				files[filepath.Clean(cfg.KeysFile())] = true
			}
			for _, f := range cfg.SchemaFiles() {
				dirs = append(dirs, filepath.Dir(f))
				files[filepath.Clean(f)] = true
			}
		}
		if err == nil && rules != nil {
			if err = cfg.Resolve(rules()); err != nil {
				cfg = nil
			}
		}
		return cfg, dirs, err
	}
	// Every kind of event on those files counts, chmod included (a chmod can make a key
	// file that could not be read readable again); so does a Kubernetes ConfigMap or
	// Secret swap, whose files are symlinks into ..data.
	relevant := func(ev fsnotify.Event) bool {
		return files[filepath.Clean(ev.Name)] || filepath.Base(ev.Name) == "..data"
	}
	w, err := reload.Watch(ctx, load, debounce, relevant, onResult)
	if err != nil {
		return nil, err
	}
	return &Watcher{w}, nil
}
