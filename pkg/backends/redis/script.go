package redis

import (
	_ "embed"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// decideLua is the whole decision path on the server: one call decides every op of a
// group (all keys in one slot), in order, each op reading and writing its own key, so the
// same key twice in one call sees its own earlier update. It lives in decide.lua so that
// Lua tools can read it; its wire numbers (algorithms, bounds) are placeholders that
// decideScript replaces with the Go constants.
//
// It is a line-by-line port of pkg/algorithms. Lua numbers are doubles; every quantity is
// an integer below 2^53 (times are microseconds), so + - * and comparisons are exact and
// integer division is math.floor(a / b), exact for 0 <= a < 2^53. Numbers cross the wire
// and sit in Redis as little-endian float64 (Redis's struct library packs and unpacks
// them without any decimal conversion, which is both exact and the cheapest to parse).
//
// ARGV[1] holds every op's inputs: now, algorithm, cost (negative: a refund), requests,
// mode (1 = Limit.Drain, 2 = Limit.Report, 4 = Limit.NeedsUnit, added), max_debt, then
// the limit fields the
// algorithm uses. ARGV[2] = "1" replaces each op's now with the server's TIME.
//
// A key holds one string: "h2" then A, B, C, D (34 bytes), plus, for the sliding log,
// the entry count n and n (at, cost) pairs. Anything else at the key (another type, or a
// string of another shape, length or with non-integer numbers) is reported as corrupt
// for that op and left alone.
//
// The reply is nine float64 per op: allowed (0/1, or 2 = wrong type, 3 = not halt
// state), limit, remaining, reset_after, retry_after, delay, ttl, debt, and the key's time after
// the op (algorithms.StateTime), which the local deny cache needs to decide as the server
// would an op older than it (algorithms.At).
//
//go:embed decide.lua
var decideLua string

// decideScript returns decide.lua with the wire numbers of pkg/algorithms injected.
func decideScript() (string, error) {
	src, err := backends.Inject(decideLua, backends.WireValues())
	if err != nil {
		return "", fmt.Errorf("redis: decide.lua: %w", err)
	}
	return src, nil
}

// appendOp appends op's inputs to the ARGV[1] spec, in the order decide.lua reads them,
// each as a little-endian float64 (exact: every value is an integer below 2^53).
func appendOp(b []byte, now int64, op *backends.Op) []byte {
	l := &op.Limit
	cost := max(op.Cost, -algorithms.MaxCount)
	b = appendNum(b, now)
	b = appendNum(b, int64(op.Algorithm))
	b = appendNum(b, cost)
	b = appendNum(b, l.Requests)
	b = appendNum(b, backends.WireMode(l))
	b = appendNum(b, l.MaxDebt)
	switch op.Algorithm {
	case algorithms.TokenBucket, algorithms.LeakyBucket:
		b = appendNum(b, l.Period)
		b = appendNum(b, l.Burst)
		b = appendNum(b, l.MaxDelay)
	case algorithms.Calendar:
		b = appendNum(b, l.WindowStart)
		b = appendNum(b, l.WindowEnd)
	case algorithms.Once:
		b = appendNum(b, l.Period)
		b = appendNum(b, l.WindowEnd)
	case algorithms.Penalty:
		b = appendNum(b, l.Period)
		b = appendNum(b, int64(l.Steps))
		for i := 0; i < l.Steps; i++ {
			b = appendNum(b, l.Ladder[i])
		}
	default:
		b = appendNum(b, l.Period)
	}
	return b
}

func appendNum(b []byte, v int64) []byte {
	return binary.LittleEndian.AppendUint64(b, math.Float64bits(float64(v)))
}

// replyFields is the number of reply fields per op; each is a little-endian float64.
const replyFields = 9

// replyBytes is the size of one op's reply.
const replyBytes = 8 * replyFields

// le64 reads a little-endian uint64 from the start of b, written out so that the
// compiler makes it one load (a loop over the bytes was most of parseReply's time).
func le64(b string) uint64 {
	_ = b[7]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// parseReply reads the fields of each op from the script's reply into the ops, and hands
// each decided op with the key's time after it to learn (when not nil).
func parseReply(reply string, keys []string, ops []*backends.Op, learn func(op *backends.Op, keyTime int64)) error {
	if len(reply) != replyBytes*len(ops) {
		return fmt.Errorf("redis apply: script reply of %d bytes for %d ops: %w", len(reply), len(ops), backends.ErrUnavailable)
	}
	var f [replyFields]int64
	for i, op := range ops {
		r := reply[i*replyBytes : (i+1)*replyBytes]
		for j := range f {
			f[j] = int64(math.Float64frombits(le64(r[8*j:])))
		}
		switch f[0] {
		case 0, 1:
			op.Err = nil
			op.Result = algorithms.Result{
				Allowed: f[0] == 1, Limit: f[1], Remaining: f[2], ResetAfter: f[3],
				RetryAfter: f[4], Delay: f[5], TTL: f[6], Debt: f[7],
			}
			if learn != nil {
				learn(op, f[8])
			}
		case 2:
			op.Err = fmt.Errorf("redis apply: key %q holds a value of another Redis type, not halt state: %w", keys[i], backends.ErrCorrupt)
		default:
			op.Err = fmt.Errorf("redis apply: key %q holds a string that is not halt state: %w", keys[i], backends.ErrCorrupt)
		}
	}
	return nil
}
