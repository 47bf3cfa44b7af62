package config

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/reload"
)

// Sources holds one Set built from two inputs together: the files under a path (read and
// watched as Watch does; none when the path is "") and documents pushed by a
// configuration server (the xDS client renders each pushed resource as a file of the
// reference's format, named "xds:NAME"). Every change rebuilds the whole Set from both,
// through Parse, so a pushed document is validated exactly as a file is, and a domain
// defined by a file and by a push is an error naming both. A change that fails keeps
// the current Set.
type Sources struct {
	mu        sync.Mutex        // one build at a time
	goodFiles map[string][]byte // the files of the current Set
	pushed    map[string][]byte // the documents of the current Set
	received  atomic.Bool       // a push was accepted
	cur       atomic.Pointer[Set]
	watcher   *reload.Watcher[Set]
	onPush    func(*Set, error)
	opt       Options
	check     func(*Set) error // SetCheck's; nil checks nothing
}

// NewSources loads path (when not "") and watches it as Watch does: onFiles sees every
// reload of the files, as Watch's onResult. onPush (may be nil) sees every push's
// outcome. Before the first push the Set holds the files only (nil without files).
func NewSources(ctx context.Context, path string, debounce time.Duration, onFiles, onPush func(*Set, error)) (*Sources, error) {
	return Options{}.NewSources(ctx, path, debounce, onFiles, onPush)
}

// NewSources is the package's NewSources with o's options: its caps bound the files and
// the pushed documents together.
func (o Options) NewSources(ctx context.Context, path string, debounce time.Duration, onFiles, onPush func(*Set, error)) (*Sources, error) {
	s := &Sources{goodFiles: map[string][]byte{}, onPush: onPush, opt: o}
	if s.onPush == nil {
		s.onPush = func(*Set, error) {}
	}
	if path == "" {
		return s, nil
	}
	w, err := o.watchFiles(ctx, path, debounce, s.buildFiles, onFiles)
	if err != nil {
		return nil, err
	}
	s.watcher = w
	return s, nil
}

// buildFiles builds the Set of new files with the current pushed documents.
func (s *Sources) buildFiles(files map[string][]byte, problems []Problem) (*Set, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set, err := s.opt.parseWith(union(files, s.pushed), problems)
	if err == nil && s.check != nil {
		err = s.check(set)
	}
	if err != nil {
		return nil, err
	}
	s.goodFiles = files
	s.cur.Store(set)
	return set, nil
}

// Push replaces the pushed documents (the whole state of the world: a document left out
// is removed) and rebuilds the Set with the current files. On error (a *LoadError naming
// each document and field) nothing changes.
func (s *Sources) Push(docs map[string][]byte) error {
	s.mu.Lock()
	set, err := s.opt.Parse(union(s.goodFiles, docs))
	if err == nil && s.check != nil {
		err = s.check(set)
	}
	if err == nil {
		s.pushed = maps.Clone(docs)
		s.cur.Store(set)
		s.received.Store(true)
	}
	s.mu.Unlock()
	s.onPush(set, err)
	return err
}

func union(a, b map[string][]byte) map[string][]byte {
	out := make(map[string][]byte, len(a)+len(b))
	maps.Copy(out, a)
	maps.Copy(out, b)
	return out
}

// SetCheck makes every later change (files reloaded, documents pushed) pass check
// before its Set replaces the current one; a change check refuses fails as a
// malformed one does, keeping the current Set. It checks what another loaded
// configuration takes from this one (the authz file's abuse.penalty names a penalty
// here), so a reload cannot take away what that configuration uses.
func (s *Sources) SetCheck(check func(*Set) error) {
	s.mu.Lock()
	s.check = check
	s.mu.Unlock()
}

// Current returns the current Set (nil before anything was loaded).
func (s *Sources) Current() *Set { return s.cur.Load() }

// Received reports whether a push was ever accepted.
func (s *Sources) Received() bool { return s.received.Load() }

// Reload re-reads the files now (SIGHUP); it does not wait.
func (s *Sources) Reload() {
	if s.watcher != nil {
		s.watcher.Reload()
	}
}

// Close stops watching the files.
func (s *Sources) Close() error {
	if s.watcher != nil {
		return s.watcher.Close()
	}
	return nil
}
