package main

import "math/bits"

// histogram is an HDR-style log-linear histogram of durations in nanoseconds: values
// below 2^subBits are counted exactly, above that every power-of-two range is split into
// 2^subBits equal buckets, so any recorded value is known to within 1/2^subBits (0.8%).
// It is a fixed array: recording neither locks nor allocates. Each worker owns one and
// they are merged after the run.
type histogram struct {
	counts [histLevels << subBits]uint64
	n      uint64
	max    int64
}

const (
	subBits    = 7
	subCount   = 1 << subBits
	histLevels = 64 - subBits + 1
)

// bucketOf maps a value to its bucket index.
func bucketOf(v int64) int {
	if v < subCount {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	exp := bits.Len64(uint64(v)) - 1 // >= subBits
	shift := exp - subBits
	level := shift + 1
	mant := int(uint64(v)>>shift) & (subCount - 1)
	return level<<subBits | mant
}

// bucketHigh is the largest value that maps to bucket i.
func bucketHigh(i int) int64 {
	level, mant := i>>subBits, i&(subCount-1)
	if level == 0 {
		return int64(mant)
	}
	shift := level - 1
	low := uint64(subCount|mant) << shift
	return int64(low + (uint64(1)<<shift - 1))
}

// record adds one value.
func (h *histogram) record(v int64) {
	h.counts[bucketOf(v)]++
	h.n++
	if v > h.max {
		h.max = v
	}
}

// merge adds o's counts into h.
func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	if o.max > h.max {
		h.max = o.max
	}
}

// quantile returns the value at or below which a fraction q of the values lie (the
// highest value of the bucket that holds that rank, never above the recorded maximum).
func (h *histogram) quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.999999999)
	if rank < 1 {
		rank = 1
	}
	if rank > h.n {
		rank = h.n
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(bucketHigh(i), h.max)
		}
	}
	return h.max
}
