package memory

import (
	"hash/maphash"
	"strings"
	"sync"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// A shard is a hash table of its own rather than a Go map: with a map every key is a
// string allocated on its own, and under eviction churn (keys inserted and evicted in
// random order) the allocator's spans of those strings stay mostly empty but alive, which
// was over half of the store's memory (~300 bytes a key at the memory-bound test's 5
// million keys). Here a key lives inside its entry, entries live in fixed blocks that are
// never freed and whose slots are reused, and the index is a flat slice of slot numbers:
// about 104 bytes of entry and 11-17 of index per key, and nothing for the garbage
// collector to scan (no pointers) except the rare long key and sliding log.
type shard struct {
	mu sync.Mutex
	// index is open addressing with linear probing: 0 is an empty position, tombstone a
	// deleted one, anything else the key's tag (the high 32 bits of its hash) above
	// slot+1, so that a probe compares keys only when the tags match and reads no entry it
	// passes over. Its length is a power of two.
	index  []uint64
	live   int32 // keys held
	tombs  int32 // tombstones in index
	blocks []*[blockSize]entry
	free   []uint32 // slots freed by deletions, reused first
	used   uint32   // slots handed out so far (free ones included)
	rng    uint64   // xorshift state for eviction samples
	// logs holds the sliding log of the keys whose algorithm keeps one (sliding_window),
	// by slot: the only state that does not fit in an entry.
	logs map[uint32][]algorithms.Entry
	// long holds the keys longer than inlineKey, by slot.
	long map[uint32]string
	seed maphash.Seed // the store's (128 bytes a shard: shards on separate cache lines)
}

const (
	// blockSize is the number of entries allocated at once (26 KiB blocks).
	blockSize = 256
	// inlineKey is the longest key held inside its entry: typical keys
	// ("domain|key=value|@algorithm:period") are 30-50 bytes.
	inlineKey = 57
	tombstone = ^uint64(0)
	minIndex  = 16
)

// entry is one key and its state: 104 bytes, no pointers.
type entry struct {
	a, b, c, d int64  // algorithms.State's A..D
	expires    int64  // microseconds, on the clock of the ops that touched it
	klen       uint16 // the key's length; a longer key than inlineKey is in shard.long
	_          [5]byte
	key        [inlineKey]byte
}

// slotOf is the slot of an index value (neither 0 nor tombstone).
func slotOf(v uint64) uint32 { return uint32(v) - 1 }

func (sh *shard) at(slot uint32) *entry { return &sh.blocks[slot/blockSize][slot%blockSize] }

// keyIs reports whether slot holds key.
func (sh *shard) keyIs(slot uint32, e *entry, key string) bool {
	if e.klen > inlineKey {
		return len(key) > inlineKey && sh.long[slot] == key
	}
	return int(e.klen) == len(key) && string(e.key[:len(key)]) == key
}

func (sh *shard) hash(key string) uint64 { return maphash.String(sh.seed, key) }

// keyOf returns slot's key (a copy).
func (sh *shard) keyOf(slot uint32, e *entry) string {
	if e.klen <= inlineKey {
		return string(e.key[:e.klen])
	}
	return sh.long[slot]
}

// tagOf and posOf split a key's hash: the low bits chose the shard (Store.shardFor), the
// high 32 bits are kept in the index to skip most key comparisons, the middle bits
// place the key in the index.
func tagOf(h uint64) uint64 { return h &^ (1<<32 - 1) }
func posOf(h uint64) uint64 { return h >> 8 }

// find returns key's slot and its position in the index.
func (sh *shard) find(key string, h uint64) (slot uint32, pos int, ok bool) {
	if len(sh.index) == 0 {
		return 0, 0, false
	}
	mask := uint64(len(sh.index) - 1)
	tag := tagOf(h)
	for i := posOf(h) & mask; ; i = (i + 1) & mask {
		v := sh.index[i]
		switch {
		case v == 0:
			return 0, 0, false
		case v == tombstone || v&^(1<<32-1) != tag:
			continue
		}
		if slot := slotOf(v); sh.keyIs(slot, sh.at(slot), key) {
			return slot, int(i), true
		}
	}
}

// insert stores a new key (not present) with its state.
func (sh *shard) insert(key string, h uint64, st *algorithms.State, expires int64) {
	if int(sh.live+sh.tombs+1)*4 > len(sh.index)*3 {
		sh.rehash()
	}
	var slot uint32
	if n := len(sh.free); n > 0 {
		slot, sh.free = sh.free[n-1], sh.free[:n-1]
	} else {
		if sh.used%blockSize == 0 {
			sh.blocks = append(sh.blocks, new([blockSize]entry))
		}
		slot = sh.used
		sh.used++
	}
	e := sh.at(slot)
	*e = entry{klen: uint16(len(key))}
	if len(key) <= inlineKey {
		copy(e.key[:], key)
	} else {
		if sh.long == nil {
			sh.long = make(map[uint32]string)
		}
		// A copy: the caller's key may be a slice of a larger string (the engine builds
		// a round's keys as one), which the map would keep whole.
		sh.long[slot] = strings.Clone(key)
		e.klen = inlineKey + 1 // any length over inlineKey: the key is in long
	}
	sh.store(slot, st, expires)
	mask := uint64(len(sh.index) - 1)
	i := posOf(h) & mask
	for ; sh.index[i] != 0 && sh.index[i] != tombstone; i = (i + 1) & mask {
	}
	if sh.index[i] == tombstone {
		sh.tombs--
	}
	sh.index[i] = tagOf(h) | uint64(slot+1)
	sh.live++
}

// rehash rebuilds the index at twice the keys held (at least minIndex), dropping the
// tombstones.
func (sh *shard) rehash() {
	n := minIndex
	for n < int(sh.live+1)*2 {
		n *= 2
	}
	old := sh.index
	sh.index = make([]uint64, n)
	sh.tombs = 0
	mask := uint64(n - 1)
	for _, v := range old {
		if v == 0 || v == tombstone {
			continue
		}
		h := sh.hash(sh.keyOf(slotOf(v), sh.at(slotOf(v))))
		i := posOf(h) & mask
		for sh.index[i] != 0 {
			i = (i + 1) & mask
		}
		sh.index[i] = v
	}
}

// store writes st and expires into slot.
func (sh *shard) store(slot uint32, st *algorithms.State, expires int64) {
	e := sh.at(slot)
	e.a, e.b, e.c, e.d, e.expires = st.A, st.B, st.C, st.D, expires
	switch {
	case len(st.Log) > 0:
		if sh.logs == nil {
			sh.logs = make(map[uint32][]algorithms.Entry)
		}
		sh.logs[slot] = st.Log
	case sh.logs != nil:
		delete(sh.logs, slot)
	}
}

// load returns the state in slot. Its log, if any, is the stored one (not a copy).
func (sh *shard) load(slot uint32) algorithms.State {
	e := sh.at(slot)
	st := algorithms.State{A: e.a, B: e.b, C: e.c, D: e.d}
	if sh.logs != nil {
		st.Log = sh.logs[slot]
	}
	return st
}

// removeAt deletes the key at index position pos (holding slot) and frees its slot.
func (sh *shard) removeAt(pos int, slot uint32) {
	sh.index[pos] = tombstone
	sh.tombs++
	sh.live--
	if sh.logs != nil {
		delete(sh.logs, slot)
	}
	if sh.long != nil {
		delete(sh.long, slot)
	}
	*sh.at(slot) = entry{}
	sh.free = append(sh.free, slot)
}

// each calls fn with every key's index position and slot until fn returns false. fn may
// remove the key it is given.
func (sh *shard) each(fn func(pos int, slot uint32) bool) {
	for i, v := range sh.index {
		if v != 0 && v != tombstone && !fn(i, slotOf(v)) {
			return
		}
	}
}

// sample calls fn with up to n keys from a random place in the index, until fn returns
// false.
func (sh *shard) sample(n int, fn func(pos int, slot uint32) bool) {
	if sh.live == 0 {
		return
	}
	sh.rng ^= sh.rng << 13
	sh.rng ^= sh.rng >> 7
	sh.rng ^= sh.rng << 17
	mask := len(sh.index) - 1
	start := int(sh.rng) & mask
	for k, seen := 0, 0; k < len(sh.index) && seen < n; k++ {
		i := (start + k) & mask
		if v := sh.index[i]; v != 0 && v != tombstone {
			seen++
			if !fn(i, slotOf(v)) {
				return
			}
		}
	}
}
