package authz

import (
	"context"
	"path/filepath"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/reload"
)

// Watcher keeps the current authz config, reloading it when the config file or its API
// key file changes (their directories are watched, so editors' rename-on-save and
// Kubernetes ConfigMap/Secret symlink swaps are seen). A config that fails to load never
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
	load := func() (*Config, []string, error) {
		cfg, err := cp.LoadConfig(path)
		dirs := []string{filepath.Dir(path)}
		if cfg != nil && cfg.KeysFile() != "" {
			dirs = append(dirs, filepath.Dir(cfg.KeysFile()))
		}
		if cfg != nil {
			for _, f := range cfg.SchemaFiles() {
				dirs = append(dirs, filepath.Dir(f))
			}
		}
		if err == nil && rules != nil {
			if err = cfg.Resolve(rules()); err != nil {
				cfg = nil
			}
		}
		return cfg, dirs, err
	}
	w, err := reload.Watch(ctx, load, debounce, nil, onResult)
	if err != nil {
		return nil, err
	}
	return &Watcher{w}, nil
}
