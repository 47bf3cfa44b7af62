// Package reload keeps a value loaded from files current: it watches directories (not
// files, so Kubernetes ConfigMap and Secret symlink swaps and editors' rename-on-save are
// seen), debounces bursts of changes, reloads on demand (SIGHUP), and swaps the new value
// in atomically only when loading succeeded. The rate-limit configuration and the
// ext_authz configuration both use it.
package reload

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Load loads the value and says which directories to watch for it.
type Load[T any] func() (value *T, dirs []string, err error)

// Watcher holds the current value.
type Watcher[T any] struct {
	load     Load[T]
	relevant func(fsnotify.Event) bool
	debounce time.Duration
	onResult func(*T, error)

	cur     atomic.Pointer[T]
	fsw     *fsnotify.Watcher
	kick    chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}
	once    sync.Once
	watched map[string]bool // owned by the loop goroutine after Watch returns
}

// Watch loads once (returning that error, if any) and then reloads after changes in the
// watched directories that relevant accepts (nil: every change, chmod included: a chmod
// can make a file that failed to load readable again), debounced, and
// on Reload. onResult (may be nil) sees every reload's outcome, from one goroutine; a
// failed reload keeps the last good value. Directories returned by later loads are
// watched too. The watcher stops when ctx is done or Close is called.
func Watch[T any](ctx context.Context, load Load[T], debounce time.Duration, relevant func(fsnotify.Event) bool, onResult func(*T, error)) (*Watcher[T], error) {
	if onResult == nil {
		onResult = func(*T, error) {}
	}
	if relevant == nil {
		relevant = func(fsnotify.Event) bool { return true }
	}
	v, dirs, err := load()
	if err != nil {
		return nil, err
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher[T]{
		load: load, relevant: relevant, debounce: debounce, onResult: onResult,
		fsw: fsw, kick: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{}),
		watched: map[string]bool{},
	}
	w.cur.Store(v)
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

// Current returns the current value. A caller that keeps the pointer for a request sees
// one consistent value even if a reload happens meanwhile.
func (w *Watcher[T]) Current() *T { return w.cur.Load() }

// Reload asks for a reload now. It does not wait; the result goes to onResult.
func (w *Watcher[T]) Reload() {
	select {
	case w.kick <- struct{}{}:
	default: // one is already pending
	}
}

// Done is closed when the watcher has stopped (its context ended or Close was called).
func (w *Watcher[T]) Done() <-chan struct{} { return w.done }

// Close stops watching. It is safe to call more than once.
func (w *Watcher[T]) Close() error {
	var err error
	w.once.Do(func() {
		w.cancel()
		err = w.fsw.Close()
		<-w.done
	})
	return err
}

func (w *Watcher[T]) loop(ctx context.Context) {
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

func (w *Watcher[T]) reload() {
	v, dirs, err := w.load()
	for _, d := range dirs {
		if !w.watched[d] && w.fsw.Add(d) == nil {
			w.watched[d] = true
		}
	}
	if err != nil {
		w.onResult(nil, err)
		return
	}
	w.cur.Store(v)
	w.onResult(v, nil)
}
