package memory

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// Snapshot file layout, all integers little-endian:
//
//	offset  size  field
//	0       8     magic "HALTSNAP"
//	8       4     format version (1)
//	12      4     CRC-32C (Castagnoli) of the body
//	16      8     number of keys in the body
//	24      8     body length in bytes (the file is exactly 32 + body length)
//	32      ...   body: per key uvarint key length, key, varint expiry (µs since the
//	              epoch), uvarint state length, backends.EncodeState bytes
//
// The header is written last (the body is streamed behind a zeroed header), so a file cut
// short by a crash never carries a valid header, and a flipped bit fails the checksum.
const (
	snapshotMagic    = "HALTSNAP"
	snapshotVersion  = 1
	snapshotHeader   = 32
	maxSnapshotKey   = 64 << 10 // far beyond any descriptor key halt builds
	maxSnapshotState = 1 + 5*binary.MaxVarintLen64 + int(algorithms.MaxSlidingLog)*2*binary.MaxVarintLen64
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrBadSnapshot wraps every reason a snapshot file is refused: wrong magic or version,
// checksum mismatch, truncation, a bad record, or an unsafe owner or mode.
var ErrBadSnapshot = errors.New("bad snapshot")

// SnapshotStats says what a restore did.
type SnapshotStats struct {
	// Restored keys were live at restore time and are back in the store.
	Restored int
	// Expired keys were in the file but expired while halt was down; they are skipped.
	Expired int
}

// WriteSnapshot writes every key of s that is live at now into path, atomically: the data
// goes to path+".tmp" (mode 0600, created fresh so a planted symlink is not followed), is
// synced, then renamed over path. It returns the number of keys written.
//
// It may run while the store serves: each shard is copied under its lock (no file I/O
// under a lock), so every key is written in one consistent state, the one it had when
// its shard was copied. Keys changed after that are in the next snapshot.
func WriteSnapshot(s *Store, path string, now int64) (int, error) {
	tmp := path + ".tmp"
	_ = os.Remove(tmp) // a leftover of an interrupted write
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, fmt.Errorf("snapshot: %w", err)
	}
	n, err := writeSnapshot(f, s, now)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return 0, fmt.Errorf("snapshot %s: %w", path, err)
	}
	// Make the rename itself durable; failing to is not worth failing the snapshot.
	if d, derr := os.Open(filepath.Dir(path)); derr == nil {
		_ = d.Sync()
		d.Close()
	}
	return n, nil
}

func writeSnapshot(f *os.File, s *Store, now int64) (int, error) {
	if _, err := f.Write(make([]byte, snapshotHeader)); err != nil {
		return 0, err
	}
	crc := crc32.New(castagnoli)
	cw := &countWriter{w: io.MultiWriter(f, crc)}
	var (
		count  uint64
		buf    []byte
		encBuf []byte
	)
	for i := range s.shards {
		sh := &s.shards[i]
		buf = buf[:0]
		sh.mu.Lock()
		sh.each(func(_ int, slot uint32) bool {
			e := sh.at(slot)
			if e.expires <= now {
				return true
			}
			st := sh.load(slot)
			encBuf = backends.EncodeState(encBuf[:0], &st)
			if e.klen <= inlineKey {
				buf = binary.AppendUvarint(buf, uint64(e.klen))
				buf = append(buf, e.key[:e.klen]...)
			} else {
				key := sh.long[slot]
				buf = binary.AppendUvarint(buf, uint64(len(key)))
				buf = append(buf, key...)
			}
			buf = binary.AppendVarint(buf, e.expires)
			buf = binary.AppendUvarint(buf, uint64(len(encBuf)))
			buf = append(buf, encBuf...)
			count++
			return true
		})
		sh.mu.Unlock()
		if _, err := cw.Write(buf); err != nil {
			return 0, err
		}
	}
	var h [snapshotHeader]byte
	copy(h[:8], snapshotMagic)
	binary.LittleEndian.PutUint32(h[8:], snapshotVersion)
	binary.LittleEndian.PutUint32(h[12:], crc.Sum32())
	binary.LittleEndian.PutUint64(h[16:], count)
	binary.LittleEndian.PutUint64(h[24:], cw.n)
	if _, err := f.WriteAt(h[:], 0); err != nil {
		return 0, err
	}
	return int(count), nil
}

type countWriter struct {
	w io.Writer
	n uint64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += uint64(n)
	return n, err
}

// LoadSnapshot restores the keys of path into s, skipping those expired at now. The file
// is checked whole (owner, mode, header, checksum, every record) before a single key is
// restored, so a bad file changes nothing. A missing file is not an error: it returns
// zero stats and an error satisfying errors.Is(err, os.ErrNotExist).
func LoadSnapshot(s *Store, path string, now int64) (SnapshotStats, error) {
	var stats SnapshotStats
	f, err := os.Open(path)
	if err != nil {
		return stats, fmt.Errorf("snapshot: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return stats, fmt.Errorf("snapshot: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return stats, fmt.Errorf("%w: %s is not a regular file", ErrBadSnapshot, path)
	}
	if err := checkOwner(fi); err != nil {
		return stats, fmt.Errorf("%w: %s: %v", ErrBadSnapshot, path, err)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return stats, fmt.Errorf("%w: %s is writable by group or others (mode %v): refusing state anyone could have planted", ErrBadSnapshot, path, fi.Mode().Perm())
	}
	var h [snapshotHeader]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return stats, fmt.Errorf("%w: %s: header: %v", ErrBadSnapshot, path, err)
	}
	if string(h[:8]) != snapshotMagic {
		return stats, fmt.Errorf("%w: %s: not a halt snapshot (bad magic; a write cut short leaves the header zeroed)", ErrBadSnapshot, path)
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != snapshotVersion {
		return stats, fmt.Errorf("%w: %s: format version %d, this build reads %d", ErrBadSnapshot, path, v, snapshotVersion)
	}
	sum := binary.LittleEndian.Uint32(h[12:])
	count := binary.LittleEndian.Uint64(h[16:])
	bodyLen := binary.LittleEndian.Uint64(h[24:])
	if size := fi.Size() - snapshotHeader; size < 0 || uint64(size) != bodyLen {
		return stats, fmt.Errorf("%w: %s: body is %d bytes, header says %d (truncated?)", ErrBadSnapshot, path, fi.Size()-snapshotHeader, bodyLen)
	}

	// Pass 1 checks the checksum and parses every record without touching the store.
	// A checksum mismatch is the truer reason when both fail: the bytes changed.
	crc := crc32.New(castagnoli)
	tee := io.TeeReader(f, crc)
	perr := readRecords(tee, count, nil)
	if perr != nil {
		_, _ = io.Copy(io.Discard, tee) // the rest of the body, for the checksum
	}
	if got := crc.Sum32(); got != sum {
		return stats, fmt.Errorf("%w: %s: checksum %08x, header says %08x (corrupt)", ErrBadSnapshot, path, got, sum)
	}
	if perr != nil {
		return stats, fmt.Errorf("%w: %s: %v", ErrBadSnapshot, path, perr)
	}
	// Pass 2 restores. The file was fully validated, so an error here is an I/O error.
	if _, err := f.Seek(snapshotHeader, io.SeekStart); err != nil {
		return stats, fmt.Errorf("snapshot: %w", err)
	}
	err = readRecords(f, count, func(key string, st algorithms.State, expires int64) {
		if expires <= now {
			stats.Expired++
			return
		}
		s.Restore(key, st, expires, now)
		stats.Restored++
	})
	if err != nil {
		return stats, fmt.Errorf("snapshot %s: %w", path, err)
	}
	return stats, nil
}

// readRecords parses count records and demands the body ends right after them. fn, when
// set, gets each record (its state is freshly allocated, safe to keep).
func readRecords(r io.Reader, count uint64, fn func(string, algorithms.State, int64)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte
	for i := uint64(0); i < count; i++ {
		kl, err := binary.ReadUvarint(br)
		if err != nil || kl > maxSnapshotKey {
			return fmt.Errorf("record %d: bad key length (%v)", i, errOr(err, "too long"))
		}
		buf = grow(buf, int(kl))
		if _, err := io.ReadFull(br, buf); err != nil {
			return fmt.Errorf("record %d: key: %v", i, err)
		}
		key := string(buf)
		expires, err := binary.ReadVarint(br)
		if err != nil {
			return fmt.Errorf("record %d: expiry: %v", i, err)
		}
		sl, err := binary.ReadUvarint(br)
		if err != nil || sl > uint64(maxSnapshotState) {
			return fmt.Errorf("record %d: bad state length (%v)", i, errOr(err, "too long"))
		}
		buf = grow(buf, int(sl))
		if _, err := io.ReadFull(br, buf); err != nil {
			return fmt.Errorf("record %d: state: %v", i, err)
		}
		var st algorithms.State
		if err := backends.DecodeState(buf, &st); err != nil {
			return fmt.Errorf("record %d (%q): %v", i, key, err)
		}
		if fn != nil {
			fn(key, st, expires)
		}
	}
	if n, _ := io.Copy(io.Discard, br); n != 0 {
		return fmt.Errorf("%d bytes after the last of %d records", n, count)
	}
	return nil
}

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

func errOr(err error, msg string) string {
	if err != nil {
		return err.Error()
	}
	return msg
}

// DefaultSnapshotInterval is how often a Persistent store writes its snapshot while it
// runs, unless told otherwise: a crash (SIGKILL, OOM) loses at most this much counting.
const DefaultSnapshotInterval = 30 * time.Second

// MinSnapshotInterval is the shortest interval between two periodic snapshots: each one
// writes and fsyncs every key.
const MinSnapshotInterval = 100 * time.Millisecond

// Persistent is a memory Store that comes back from a snapshot at open, writes one every
// interval while it runs, and a last one on Close (a clean shutdown), so a restart does
// not hand every client a fresh quota and a crash loses at most one interval.
type Persistent struct {
	*Store
	path     string
	interval time.Duration
	log      *slog.Logger
	now      func() int64
	writeMu  sync.Mutex // one snapshot write at a time
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
	err      error
}

// OpenPersistent returns a store restored from the snapshot at path, writing it every
// interval (zero: DefaultSnapshotInterval; negative: only on Close). It fails when the
// snapshot cannot be written there (a directory that does not exist or is not writable),
// so that the problem shows at start, not at the first snapshot or the shutdown. Any
// problem with an existing file (truncated, corrupt, owned by someone else, unreadable) is
// logged and ignored: the store then starts empty, as it would without a snapshot.
func OpenPersistent(cfg Config, path string, interval time.Duration, log *slog.Logger) (*Persistent, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if interval == 0 {
		interval = DefaultSnapshotInterval
	}
	if interval > 0 && interval < MinSnapshotInterval {
		return nil, fmt.Errorf("memory snapshot: interval %v is shorter than %v", interval, MinSnapshotInterval)
	}
	if err := checkWritable(path); err != nil {
		return nil, err
	}
	now := cfg.Clock
	if now == nil {
		now = func() int64 { return time.Now().UnixMicro() }
	}
	p := &Persistent{Store: New(cfg), path: path, interval: interval, log: log, now: now,
		stop: make(chan struct{}), done: make(chan struct{})}
	start := time.Now()
	st, err := LoadSnapshot(p.Store, path, now())
	switch {
	case errors.Is(err, os.ErrNotExist):
		log.Info("memory snapshot: none to restore; starting empty", "path", path)
	case err != nil:
		log.Warn("memory snapshot ignored; starting empty", "path", path, "reason", err)
	default:
		log.Info("memory snapshot restored", "path", path, "keys", st.Restored, "expired_skipped", st.Expired, "took", time.Since(start))
	}
	if interval > 0 {
		go p.loop()
	} else {
		close(p.done)
	}
	return p, nil
}

// checkWritable makes sure a snapshot can be written at path: its temporary file can be
// created (and is removed again) in path's directory, and path, when it exists, is a
// regular file.
func checkWritable(path string) error {
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("memory snapshot: %s is not a regular file", path)
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("memory snapshot: cannot write in %s: %w", filepath.Dir(path), err)
	}
	f.Close()
	return os.Remove(tmp)
}

// loop writes the snapshot every interval until Close.
func (p *Persistent) loop() {
	defer close(p.done)
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.write("periodic")
		}
	}
}

// write writes one snapshot, logging the outcome (a periodic success at debug level:
// one line per interval is noise).
func (p *Persistent) write(why string) error {
	p.writeMu.Lock()
	defer p.writeMu.Unlock()
	start := time.Now()
	n, err := WriteSnapshot(p.Store, p.path, p.now())
	if err != nil {
		p.log.Warn("memory snapshot not written", "path", p.path, "when", why, "err", err)
		return err
	}
	level := slog.LevelInfo
	if why == "periodic" {
		level = slog.LevelDebug
	}
	p.log.Log(context.Background(), level, "memory snapshot written", "path", p.path, "when", why, "keys", n, "took", time.Since(start))
	return nil
}

// Interval is how often the snapshot is written while the store runs (negative: only on
// Close).
func (p *Persistent) Interval() time.Duration { return p.interval }

// Close stops the periodic snapshots and the store (later Applies fail), then writes the
// last snapshot, so no update can slip in between the snapshot and the exit. A failed
// write is logged and returned.
func (p *Persistent) Close() error {
	p.once.Do(func() {
		if p.interval > 0 {
			close(p.stop)
		}
		<-p.done
		p.Store.Close()
		p.err = p.write("shutdown")
	})
	return p.err
}
