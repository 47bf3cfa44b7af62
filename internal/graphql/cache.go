package graphql

import (
	"container/list"
	"sync"
)

// cache remembers persisted query texts by their SHA-256 (hex), per tenant: each
// tenant (the identity the route keys by, Request.Tenant) has a shelf of its own
// bounded share of bytes, least recently used first out, so that one tenant's
// registrations only ever evict its own texts. Before, one cache was shared: a tenant
// registering padded texts evicted everyone's, and their hash-only requests went from
// their price to unknown_cost. The shelves are bounded in number (budget / share): a
// new tenant arriving when all are taken takes the shelf of the tenant idle the
// longest. Only texts whose hash was verified go in.
type cache struct {
	mu         sync.Mutex
	share      int64 // one shelf
	maxTenants int
	order      *list.List // of *shelf, most recently used at the front
	byTenant   map[string]*list.Element
}

type shelf struct {
	tenant string
	used   int64
	order  *list.List // of *entry, most recent at the front
	byHash map[string]*list.Element
}

type entry struct{ hash, query string }

func newCache(budget, share int64) *cache {
	share = min(share, budget)
	return &cache{share: share, maxTenants: int(budget / max(share, 1)),
		order: list.New(), byTenant: map[string]*list.Element{}}
}

func (c *cache) get(tenant, hash string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	tl, ok := c.byTenant[tenant]
	if !ok {
		return "", false
	}
	s := tl.Value.(*shelf)
	el, ok := s.byHash[hash]
	if !ok {
		return "", false
	}
	c.order.MoveToFront(tl)
	s.order.MoveToFront(el)
	return el.Value.(*entry).query, true
}

func (c *cache) put(tenant, hash, query string) {
	size := int64(len(hash) + len(query))
	if size > c.share || c.maxTenants == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	tl, ok := c.byTenant[tenant]
	if !ok {
		if c.order.Len() >= c.maxTenants {
			last := c.order.Back()
			old := last.Value.(*shelf)
			c.order.Remove(last)
			delete(c.byTenant, old.tenant)
		}
		tl = c.order.PushFront(&shelf{tenant: tenant, order: list.New(), byHash: map[string]*list.Element{}})
		c.byTenant[tenant] = tl
	}
	c.order.MoveToFront(tl)
	s := tl.Value.(*shelf)
	if el, ok := s.byHash[hash]; ok {
		s.order.MoveToFront(el)
		return
	}
	for s.used+size > c.share {
		last := s.order.Back()
		e := last.Value.(*entry)
		s.order.Remove(last)
		delete(s.byHash, e.hash)
		n := int64(len(e.hash) + len(e.query))
		s.used -= n
	}
	s.byHash[hash] = s.order.PushFront(&entry{hash: hash, query: query})
	s.used += size
}

// len is the number of texts remembered, on every shelf (tests).
func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for el := c.order.Front(); el != nil; el = el.Next() {
		n += el.Value.(*shelf).order.Len()
	}
	return n
}

// bytes is what the texts on every shelf weigh (tests): the shelves' own counts, which
// eviction keeps; at most maxTenants x share, so within the budget.
func (c *cache) bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for el := c.order.Front(); el != nil; el = el.Next() {
		n += el.Value.(*shelf).used
	}
	return n
}
