package authz

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watcher keeps the current authz config, reloading it when the config file or its API
// key file changes (directories are watched, so editors' rename-on-save and Kubernetes
// ConfigMap/Secret symlink swaps are seen). A config that fails to load never replaces
// the current one.
type Watcher struct {
	path     string
	debounce time.Duration
	onResult func(*Config, error)
	cur      atomic.Pointer[Config]
	fs       *fsnotify.Watcher
	kick     chan struct{}
	cancel   context.CancelFunc
	done     chan struct{}
	mu       sync.Mutex
	dirs     map[string]bool
}

// Watch loads path and keeps reloading it until ctx is done or Close is called.
// onResult is called after every reload (not the first load, whose error Watch returns).
func Watch(ctx context.Context, path string, debounce time.Duration, onResult func(*Config, error)) (*Watcher, error) {
	cfg, err := LoadConfig(path)
	if err != nil {
		return nil, err
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("authz watch: %w", err)
	}
	if debounce <= 0 {
		debounce = 300 * time.Millisecond
	}
	if onResult == nil {
		onResult = func(*Config, error) {}
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{path: path, debounce: debounce, onResult: onResult, fs: fw, kick: make(chan struct{}, 1),
		cancel: cancel, done: make(chan struct{}), dirs: map[string]bool{}}
	w.cur.Store(cfg)
	w.watchDirs(cfg)
	go w.loop(ctx)
	return w, nil
}

// Current returns the config in force.
func (w *Watcher) Current() *Config { return w.cur.Load() }

// Reload asks for a reload (SIGHUP); it does not wait for it.
func (w *Watcher) Reload() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Close stops watching. It is safe to call more than once.
func (w *Watcher) Close() error {
	w.cancel()
	<-w.done
	return nil
}

func (w *Watcher) watchDirs(cfg *Config) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, f := range []string{w.path, cfg.KeysFile()} {
		if f == "" {
			continue
		}
		d := filepath.Dir(f)
		if !w.dirs[d] {
			if err := w.fs.Add(d); err == nil {
				w.dirs[d] = true
			}
		}
	}
}

func (w *Watcher) loop(ctx context.Context) {
	defer close(w.done)
	defer w.fs.Close()
	var timer *time.Timer
	var fire <-chan time.Time
	arm := func() {
		if timer == nil {
			timer = time.NewTimer(w.debounce)
		} else {
			timer.Reset(w.debounce)
		}
		fire = timer.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-w.fs.Events:
			if !ok {
				return
			}
			arm()
		case <-w.fs.Errors:
		case <-w.kick:
			arm()
		case <-fire:
			fire = nil
			cfg, err := LoadConfig(w.path)
			if err == nil {
				w.cur.Store(cfg)
				w.watchDirs(cfg)
			}
			w.onResult(cfg, err)
		}
	}
}
