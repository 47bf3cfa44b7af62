package plans

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDebounce is the quiet time Watch waits after a file change before reloading.
const DefaultDebounce = 300 * time.Millisecond

// Watcher keeps the current Set of a file or directory, reloading it on changes.
type Watcher struct {
	path     string
	fileMode bool
	debounce time.Duration
	onResult func(*Set, error)

	cur     atomic.Pointer[Set]
	fsw     *fsnotify.Watcher
	kick    chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}
	once    sync.Once
	watched map[string]bool // owned by the loop goroutine after Watch returns
}

// Watch loads path, then reloads it whenever a file in it changes (fsnotify on the
// directory, so Kubernetes ConfigMap symlink swaps and editors' rename-on-save are seen)
// and whenever Reload is called. Changes are debounced (debounce <= 0 means
// DefaultDebounce). Each reload validates the whole Set before swapping it in atomically;
// on failure the last good Set stays current. onResult (may be nil) is called after every
// reload, from one goroutine, with the new Set or the error; the initial load's result is
// Watch's own. The watcher stops when ctx is done or Close is called.
func Watch(ctx context.Context, path string, debounce time.Duration, onResult func(*Set, error)) (*Watcher, error) {
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	if onResult == nil {
		onResult = func(*Set, error) {}
	}
	s, dirs, err := load(path)
	if err != nil {
		return nil, err
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watching %s: %w", path, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{
		path: path, debounce: debounce, onResult: onResult,
		fsw: fsw, kick: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{}),
		watched: map[string]bool{},
	}
	w.cur.Store(s)
	if len(dirs) == 0 { // a file: watch its directory
		w.fileMode = true
		dirs = []string{filepath.Dir(path)}
	}
	for _, d := range dirs {
		if err := fsw.Add(d); err != nil {
			cancel()
			fsw.Close()
			return nil, fmt.Errorf("watching %s: %w", d, err)
		}
		w.watched[d] = true
	}
	go w.loop(ctx)
	return w, nil
}

// Current returns the current Set. A caller that keeps the pointer for a request sees one
// consistent Set even if a reload happens meanwhile.
func (w *Watcher) Current() *Set { return w.cur.Load() }

// Reload asks for a reload now (the binary calls it on SIGHUP). It does not wait; the
// result goes to onResult.
func (w *Watcher) Reload() {
	select {
	case w.kick <- struct{}{}:
	default: // one is already pending
	}
}

// Close stops watching. It is safe to call more than once.
func (w *Watcher) Close() error {
	var err error
	w.once.Do(func() {
		w.cancel()
		err = w.fsw.Close()
		<-w.done
	})
	return err
}

func (w *Watcher) relevant(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	if !w.fileMode {
		return true
	}
	base := filepath.Base(ev.Name)
	// The file itself, or a ConfigMap swap in its directory (the file is a symlink into ..data).
	return base == filepath.Base(w.path) || base == "..data"
}

func (w *Watcher) loop(ctx context.Context) {
	defer close(w.done)
	var timer *time.Timer
	var fire <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
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
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return
			}
			if w.relevant(ev) {
				arm()
			}
		case _, ok := <-w.fsw.Errors:
			if !ok {
				return
			}
			arm() // events may have been lost (queue overflow): reload to be sure
		case <-fire:
			fire = nil
			w.reload()
		case <-w.kick:
			if timer != nil {
				timer.Stop()
				fire = nil
			}
			w.reload()
		}
	}
}

func (w *Watcher) reload() {
	s, dirs, err := load(w.path)
	if !w.fileMode {
		for _, d := range dirs {
			if !w.watched[d] && w.fsw.Add(d) == nil {
				w.watched[d] = true
			}
		}
	}
	if err != nil {
		w.onResult(nil, err)
		return
	}
	w.cur.Store(s)
	w.onResult(s, nil)
}
