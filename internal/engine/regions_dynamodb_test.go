package engine_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/localfirst"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
)

// TestRegionsDynamoDBReplicated: regions a and b share one limit through a DynamoDB
// global table, each reading the other's sub-counter from its own replica of the table
// with reads that never write (localfirst.Region.Peek). DynamoDB Local has no global
// tables, so the replicas are modelled by one table both regions' stores open: what a
// replica holds once replication caught up. A third region, c, is declared but never
// counts. Connected, the regions admit together what the Redis test's do (the limit,
// plus at most what b admits in one read interval); the reads wrote nothing: c's item
// was never created, and reads of b's item in a later window (where a cost-0 Apply
// would start b's new window, a write) leave it as b wrote it.
func TestRegionsDynamoDBReplicated(t *testing.T) {
	endpoint := testutil.Peer(t, "DYNAMODB_ENDPOINT")
	const table = "halt_test"
	a, b, c, clock, prefix := dynamoRegions(t, endpoint, table)
	a.also = []*localfirst.Regions{c} // c counts nothing but runs: its heartbeat is written

	const limit, perRead = 1000, 38
	admA, admB := window(t, clock, a, b, t0.Add(10*time.Second), -1, nil)
	t.Logf("connected: a %d, b %d, total %d", admA, admB, admA+admB)
	if tot := admA + admB; tot < limit || tot > limit+perRead {
		t.Errorf("connected: admitted %d, want between %d and %d", tot, limit, limit+perRead)
	}
	for _, r := range []*region{a, b} {
		for _, other := range []string{map[string]string{"a": "b", "b": "a"}[r.name], "c"} {
			if e := promtest.ToFloat64(r.m.RegionReadErrors.WithLabelValues(other)); e != 0 {
				t.Errorf("region %s failed %v reads of %s", r.name, e, other)
			}
		}
		if h := promtest.ToFloat64(r.m.RegionShareDecisions); h > 50 {
			t.Errorf("region %s held %v decisions to its share, want at most 50 (those before the first read)", r.name, h)
		}
	}

	key := string(engine.LimitKey(nil, "d", []config.Entry{{Key: "tenant", Value: "t1"}}, nil, algorithms.FixedWindow, 10_000_000))
	client := ddb.New(ddb.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", "")})
	item := func(region string) map[string]types.AttributeValue {
		t.Helper()
		out, err := client.GetItem(context.Background(), &ddb.GetItemInput{TableName: aws.String(table), ConsistentRead: aws.Bool(true),
			Key: map[string]types.AttributeValue{"pk": &types.AttributeValueMemberS{Value: prefix + key + backends.RegionTag + region}}})
		if err != nil {
			t.Fatal(err)
		}
		return out.Item
	}
	if it := item("c"); it != nil {
		t.Errorf("region c's item exists after the other regions only read it: %v", it)
	}
	before := item("b")
	if before == nil {
		t.Fatal("region b's item is missing")
	}
	// The next window, 1.5 s in: a reads b's count (0 in this window) without starting
	// b's window in the table. b and c write their heartbeats first (they run).
	clock.mu.Lock()
	clock.now = t0.Add(21500 * time.Millisecond)
	clock.mu.Unlock()
	if err := b.eng.SyncRegions(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(context.Background(), clock.Now().UnixMicro()); err != nil {
		t.Fatal(err)
	}
	if !a.check(t) {
		t.Fatal("a refused the first call of a new window")
	}
	if err := a.eng.SyncRegions(context.Background()); err != nil {
		t.Fatal(err)
	}
	now := clock.Now().UnixMicro()
	if n, at, ok := a.regions.Seen(key, "b"); !ok || n != 0 || at != now {
		t.Fatalf("a's reading of b in the new window: %d at %d (%v), want 0 read at %d", n, at, ok, now)
	}
	after := item("b")
	for _, attr := range []string{"v", "s", "exp"} {
		if fmt.Sprint(before[attr]) != fmt.Sprint(after[attr]) {
			t.Errorf("a's read changed b's item: %s was %v, is %v", attr, before[attr], after[attr])
		}
	}
	if it := item("c"); it != nil {
		t.Errorf("region c's item exists after the other regions only read it: %v", it)
	}
}

// dynamoRegions opens regions a and b of a limit shared through a DynamoDB global table
// (modelled by one table both open: see TestRegionsDynamoDBReplicated), each reading
// the other and a third region c as replicated and writing its heartbeat in its store,
// and c's Regions (no engine: it counts nothing, only heartbeats when synced), all
// manual on one fake clock.
func dynamoRegions(t *testing.T, endpoint, table string) (a, b *region, c *localfirst.Regions, clock *fakeClock, prefix string) {
	t.Helper()
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	storeURL := "dynamodb://" + table + "?region=us-east-1&access_key_id=test&secret_access_key=test&endpoint=" + url.QueryEscape(endpoint)
	set, err := config.Parse(map[string][]byte{"regions.yaml": []byte(fmt.Sprintf(sharedYAML, algorithms.FixedWindow, ""))})
	if err != nil {
		t.Fatal(err)
	}
	prefix = fmt.Sprintf("rgd-%d:", time.Now().UnixNano())
	clock = &fakeClock{now: t0}
	open := func() backends.Store {
		// A timeout generous enough that a loaded machine never turns a slow read into a
		// partition.
		s, err := all.Open(context.Background(), storeURL, backends.Options{Timeout: 30 * time.Second, KeyPrefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b = &region{name: "a", store: open()}, &region{name: "b", store: open()}
	peek := func(s backends.Store) backends.Peeker {
		p, ok := s.(backends.Peeker)
		if !ok {
			t.Fatalf("%T does not implement backends.Peeker", s)
		}
		return p
	}
	for _, pair := range [][2]*region{{a, b}, {b, a}} {
		r, other := pair[0], pair[1]
		p := peek(r.store)
		r.m = metrics.New(nil)
		r.regions = localfirst.NewRegions(localfirst.RegionsConfig{Local: r.name,
			Others: []localfirst.Region{{Name: other.name, Peek: p}, {Name: "c", Peek: p}},
			Now:    clock.Now, Metrics: r.m, Manual: true, Heartbeat: r.store})
		r.eng, err = engine.New(engine.Config{Store: r.store, StoreName: "dynamodb", Rules: func() *config.Set { return set },
			Clock: clock, Metrics: r.m, LocalFirstAnnounce: time.Second, LocalFirstManual: true, Regions: r.regions})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.eng.Close(context.Background()) })
	}
	cs := open()
	c = localfirst.NewRegions(localfirst.RegionsConfig{Local: "c", Now: clock.Now, Manual: true, Heartbeat: cs,
		Others: []localfirst.Region{{Name: "a", Peek: peek(cs)}, {Name: "b", Peek: peek(cs)}}})
	t.Cleanup(c.Close)
	return a, b, c, clock, prefix
}

// soloWindow runs a window's traffic on region a alone, from start: a call every 2 ms;
// every 100 ms, the running regions sync (b and c first: their heartbeats), then a
// reads. It returns what a admitted and how many of its decisions were held to its
// share.
func soloWindow(t *testing.T, clock *fakeClock, a *region, start time.Time, running ...func() error) (adm int64, held float64) {
	t.Helper()
	clock.mu.Lock()
	clock.now = start
	clock.mu.Unlock()
	before := promtest.ToFloat64(a.m.RegionShareDecisions)
	const step = 2 * time.Millisecond
	end := start.Add(10 * time.Second)
	for i := 0; clock.Now().Before(end); i++ {
		if i%50 == 0 {
			for _, sync := range running {
				if err := sync(); err != nil {
					t.Fatal(err)
				}
			}
			if err := a.eng.SyncRegions(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if a.check(t) {
			adm++
		}
		clock.Add(step)
	}
	return adm, promtest.ToFloat64(a.m.RegionShareDecisions) - before
}

// TestRegionsDynamoDBReplicationOutage: a replication outage leaves a region's own
// replica answering, so only the other regions' heartbeats show it. Healthy (b and c
// heartbeat, only a takes traffic), a takes the whole limit in a window and is not held;
// once b's heartbeat stops (b's halt stopped, or its writes stopped reaching a's
// replica: the same to a), a is held to its share (a third) in the next window and
// b's staleness shows it, though every read of a's replica answers; once b heartbeats
// again, a takes the whole limit again.
func TestRegionsDynamoDBReplicationOutage(t *testing.T) {
	endpoint := testutil.Peer(t, "DYNAMODB_ENDPOINT")
	a, b, c, clock, _ := dynamoRegions(t, endpoint, "halt_test")
	ctx := context.Background()
	syncB := func() error { return b.eng.SyncRegions(ctx) }
	syncC := func() error { return c.Sync(ctx, clock.Now().UnixMicro()) }

	adm, held := soloWindow(t, clock, a, t0.Add(10*time.Second), syncB, syncC)
	if adm != 1000 || held > 50 {
		t.Errorf("healthy: a admitted %d (%v held to its share), want the whole limit, 1000, and at most 50 held (those before the first read)", adm, held)
	}

	// b's heartbeat stops at t0+20s; c keeps running.
	adm, held = soloWindow(t, clock, a, t0.Add(30*time.Second), syncC)
	if share := a.regions.ShareOf(1000); adm != share {
		t.Errorf("b's replication stopped: a admitted %d, want its share, %d", adm, share)
	}
	if held < 1000 {
		t.Errorf("b's replication stopped: %v decisions held to the share, want every one of the window's 5000", held)
	}
	if e := promtest.ToFloat64(a.m.RegionReadErrors.WithLabelValues("b")); e != 0 {
		t.Errorf("a failed %v reads of b: the replica answered every one", e)
	}
	if st := promtest.ToFloat64(a.m.RegionStaleness.WithLabelValues("b")); st < 10 {
		t.Errorf("b's staleness is %vs, want at least 10s (its heartbeat stopped 20s ago)", st)
	}
	if st := promtest.ToFloat64(a.m.RegionStaleness.WithLabelValues("c")); st > 1 {
		t.Errorf("c's staleness is %vs, want under 1s: c heartbeats", st)
	}

	// Replication resumes (b heartbeats again): the share rule lifts from the next read.
	adm, held = soloWindow(t, clock, a, t0.Add(50*time.Second), syncB, syncC)
	if adm != 1000 || held > 50 {
		t.Errorf("b's replication resumed: a admitted %d (%v held to its share), want the whole limit, 1000, and at most 50 held", adm, held)
	}
}
