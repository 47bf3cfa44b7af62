package metrics

import "sync"

// OverflowKey is the label value (and the last part of a statsd name) that every
// request-valued key beyond its cap is counted under, so that a flood of distinct values
// adds one series instead of one per value.
const OverflowKey = "__overflow__"

// Default caps on the keys that carry request values (detailed_metric, value_to_metric,
// Envoy's limit overrides): per rule, and over all rules. docs/observability.md documents
// them; the binary's --stats-max-keys-per-rule and --stats-max-keys change them.
const (
	DefaultMaxKeysPerRule = 100
	DefaultMaxKeys        = 1000
)

// KeyCap bounds the distinct keys that carry request values. A key is admitted once and
// then always; past perGroup keys in its group (a rule), or total keys in all, a new
// key is refused and its caller counts it under OverflowKey. Admitted keys are never
// forgotten: a series that disappeared would break rate() over it.
type KeyCap struct {
	perGroup, total int

	mu     sync.RWMutex
	groups map[string]int
	keys   map[groupKey]struct{}
}

type groupKey struct{ group, key string }

// NewKeyCap returns a cap of perGroup keys per group and total keys in all; a bound of
// zero or less takes its default.
func NewKeyCap(perGroup, total int) *KeyCap {
	if perGroup <= 0 {
		perGroup = DefaultMaxKeysPerRule
	}
	if total <= 0 {
		total = DefaultMaxKeys
	}
	return &KeyCap{perGroup: perGroup, total: total, groups: map[string]int{}, keys: map[groupKey]struct{}{}}
}

// Admit reports whether key may have series of its own in group: true when it was
// admitted before, or when neither bound is reached (it is then remembered).
func (c *KeyCap) Admit(group, key string) bool {
	gk := groupKey{group, key}
	c.mu.RLock()
	_, ok := c.keys[gk]
	c.mu.RUnlock()
	if ok {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.keys[gk]; ok {
		return true
	}
	if len(c.keys) >= c.total || c.groups[group] >= c.perGroup {
		return false
	}
	c.keys[gk] = struct{}{}
	c.groups[group]++
	return true
}

// Len is the number of keys admitted.
func (c *KeyCap) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.keys)
}

// Bounds returns the caps in force: per group and in total.
func (c *KeyCap) Bounds() (perGroup, total int) { return c.perGroup, c.total }
