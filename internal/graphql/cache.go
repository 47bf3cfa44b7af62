package graphql

import (
	"container/list"
	"sync"
)

// cache remembers persisted query texts by their SHA-256 (hex), least recently used
// first out, within a budget of bytes. Only texts whose hash was verified go in.
type cache struct {
	mu     sync.Mutex
	budget int64
	used   int64
	order  *list.List // of *entry, most recent at the front
	byHash map[string]*list.Element
}

type entry struct{ hash, query string }

func newCache(budget int64) *cache {
	return &cache{budget: budget, order: list.New(), byHash: map[string]*list.Element{}}
}

func (c *cache) get(hash string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byHash[hash]
	if !ok {
		return "", false
	}
	c.order.MoveToFront(el)
	return el.Value.(*entry).query, true
}

func (c *cache) put(hash, query string) {
	size := int64(len(hash) + len(query))
	if size > c.budget {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byHash[hash]; ok {
		c.order.MoveToFront(el)
		return
	}
	for c.used+size > c.budget {
		last := c.order.Back()
		e := last.Value.(*entry)
		c.order.Remove(last)
		delete(c.byHash, e.hash)
		c.used -= int64(len(e.hash) + len(e.query))
	}
	c.byHash[hash] = c.order.PushFront(&entry{hash: hash, query: query})
	c.used += size
}

// len is the number of texts remembered (tests).
func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
