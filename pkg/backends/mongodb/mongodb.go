// Package mongodb keeps halt-envoy's rate-limit state in MongoDB: one document per key,
// every decision made in Go by algorithms.Decide and written back with a compare-and-swap
// on a version field, so each op is atomic on its key across every halt replica.
//
// A document looks like {_id: key, v: <int64 version>, s: <binary backends.EncodeState>,
// exp: <date>}. Expired documents are removed by a TTL index on exp, or, on servers
// that reject TTL indexes (FerretDB v1), by a background sweep.
package mongodb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// DefaultTimeout bounds each call unless Options.Timeout says otherwise. A decision is
// two round trips (read, then conditional write) to the primary, and a lost race costs
// two more, so the 15 ms of the in-memory stores would fail open under ordinary load
// (docs/backends.md has the measurement). It is above Envoy's default 20 ms filter
// timeout: raise that one (docs/envoy.md); halt warns at start when it does not fit.
const DefaultTimeout = 100 * time.Millisecond

// Defaults for the settings the store URL may override.
const (
	// DefaultDatabase is used when the URL has no path.
	DefaultDatabase = "halt"
	// DefaultCollection is used when the URL has no collection option.
	DefaultCollection = "ratelimits"
	// DefaultSweepInterval is how often the fallback sweeper runs when the server has no
	// TTL indexes.
	DefaultSweepInterval = time.Minute
	// DefaultSweepBatch bounds the documents one sweep round deletes, so a sweep after a
	// long outage never issues one huge delete.
	DefaultSweepBatch = 1000
	// DefaultSetupTimeout bounds Open's ping and index creation. The driver's server
	// selection timeout defaults to the same value so that an unreachable server fails
	// Open instead of blocking it.
	DefaultSetupTimeout = 10 * time.Second
)

// Config holds the MongoDB-specific settings, normally parsed from the store URL by Open.
type Config struct {
	// URI is the driver connection string with halt's own options removed.
	URI string
	// Database and Collection name where documents live.
	Database, Collection string
	// CASAttempts bounds the compare-and-swap rounds of one op; zero means
	// backends.DefaultCASAttempts.
	CASAttempts int
	// TTLIndex, when false, skips the TTL index and always runs the sweeper (for servers
	// where the index is unwanted or not permitted).
	TTLIndex bool
	// SweepInterval and SweepBatch tune the fallback sweeper.
	SweepInterval time.Duration
	SweepBatch    int
	// SetupTimeout bounds Open's I/O.
	SetupTimeout time.Duration
}

// Store is the MongoDB backend.
type Store struct {
	client *mongo.Client
	coll   *mongo.Collection
	cfg    Config
	opt    backends.Options
	cas    backends.CAS
	batch  *backends.Batcher
	log    *slog.Logger

	mu        sync.Mutex // guards sweeping and closed
	sweeping  bool
	closed    bool
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// ParseURL reads a mongodb:// or mongodb+srv:// store URL. The database comes from the
// path (default "halt"); halt's own query options are collection, cas_attempts (old name
// max_attempts), ttl_index, sweep_interval, sweep_batch and setup_timeout. Every other
// query option goes to the driver (authSource, replicaSet, tls, ...), which must know it.
func ParseURL(raw string) (Config, error) {
	cfg, _, err := parseURL(raw)
	return cfg, err
}

// parseURL is ParseURL that also returns the query, whose renamed options Open warns of.
func parseURL(raw string) (Config, *backends.Query, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Config{}, nil, fmt.Errorf("mongodb URL: %w", backends.Redact(err))
	}
	if u.Scheme != "mongodb" && u.Scheme != "mongodb+srv" {
		return Config{}, nil, fmt.Errorf("mongodb URL: scheme %q is not mongodb or mongodb+srv", u.Scheme)
	}
	cfg := Config{
		Database:      strings.Trim(u.Path, "/"),
		Collection:    DefaultCollection,
		TTLIndex:      true,
		SweepInterval: DefaultSweepInterval,
		SweepBatch:    DefaultSweepBatch,
		SetupTimeout:  DefaultSetupTimeout,
	}
	if cfg.Database == "" {
		cfg.Database = DefaultDatabase
	}
	if strings.Contains(cfg.Database, "/") {
		return Config{}, nil, fmt.Errorf("mongodb URL: database name %q must not contain '/'", cfg.Database)
	}
	q, err := backends.NewQuery("mongodb", u)
	if err != nil {
		return Config{}, nil, err
	}
	cfg.Collection = q.String("collection", cfg.Collection)
	if cfg.Collection == "" {
		q.Invalid("collection", "a collection name")
	}
	q.Alias("max_attempts", "cas_attempts")
	cfg.CASAttempts = q.Int("cas_attempts", backends.DefaultCASAttempts, 1, backends.MaxCASAttempts)
	cfg.TTLIndex = q.Bool("ttl_index", cfg.TTLIndex)
	cfg.SweepInterval = q.Duration("sweep_interval", cfg.SweepInterval, time.Millisecond)
	cfg.SetupTimeout = q.Duration("setup_timeout", cfg.SetupTimeout, time.Millisecond)
	cfg.SweepBatch = q.Int("sweep_batch", cfg.SweepBatch, 1, math.MaxInt)
	rest, err := q.Rest()
	if err != nil {
		return Config{}, nil, err
	}
	if err := driverKnows(rest, q.Known()); err != nil {
		return Config{}, nil, err
	}
	u.RawQuery = rest.Encode()
	cfg.URI = u.String()
	return cfg, q, nil
}

// driverKnows checks that every option halt does not take is one the MongoDB driver
// takes (it would ignore an unknown one, so a misspelt option would silently do nothing).
// The check parses a plain mongodb:// URI, so it never resolves a mongodb+srv:// host;
// the SRV-only options are left to the driver.
func driverKnows(rest url.Values, ours []string) error {
	check := url.Values{}
	for k, v := range rest {
		if l := strings.ToLower(k); l != "srvservicename" && l != "srvmaxhosts" {
			check[k] = v
		}
	}
	if len(check) == 0 {
		return nil
	}
	cs, err := connstring.Parse("mongodb://localhost/?" + check.Encode())
	if err != nil {
		return fmt.Errorf("mongodb URL: %w", err)
	}
	for k := range check {
		if _, unknown := cs.UnknownOptions[strings.ToLower(k)]; unknown {
			return fmt.Errorf("mongodb URL: unknown option %q: neither halt (%s) nor the MongoDB driver takes it", k, strings.Join(ours, ", "))
		}
	}
	return nil
}

// Open connects to the server named by rawURL, checks that it answers and makes sure
// expired documents will be removed (TTL index, or the sweeper when the server has none).
// It fails with an error wrapping backends.ErrUnavailable, within the setup timeout, when
// the server cannot be reached.
func Open(ctx context.Context, rawURL string, opt backends.Options) (*Store, error) {
	cfg, q, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	q.WarnRenamed(opt.Defaults(DefaultTimeout).Logger)
	s, err := New(cfg, opt)
	if err != nil {
		return nil, err
	}
	if err := s.setup(ctx); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// New builds a store from cfg without any I/O; the driver connects lazily. Open is the
// usual entry point: New alone does not create the TTL index.
func New(cfg Config, opt backends.Options) (*Store, error) {
	opt = opt.Defaults(DefaultTimeout)
	if cfg.Database == "" {
		cfg.Database = DefaultDatabase
	}
	if cfg.Collection == "" {
		cfg.Collection = DefaultCollection
	}
	if cfg.CASAttempts <= 0 {
		cfg.CASAttempts = backends.DefaultCASAttempts
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.SweepBatch <= 0 {
		cfg.SweepBatch = DefaultSweepBatch
	}
	if cfg.SetupTimeout <= 0 {
		cfg.SetupTimeout = DefaultSetupTimeout
	}
	co := options.Client().ApplyURI(cfg.URI)
	if co.ServerSelectionTimeout == nil {
		// The driver's default (30 s) would let a request with no deadline hang that
		// long; every Apply has a deadline anyway, so this only bounds setup.
		co.SetServerSelectionTimeout(cfg.SetupTimeout)
	}
	if co.ConnectTimeout == nil {
		co.SetConnectTimeout(cfg.SetupTimeout)
	}
	if co.AppName == nil {
		co.SetAppName("halt-envoy")
	}
	client, err := mongo.Connect(co)
	if err != nil {
		// The driver quotes the connection string in some errors: never log a password.
		return nil, fmt.Errorf("mongodb open: %w", backends.Redact(err))
	}
	s := &Store{
		client: client,
		// Reads go to the primary whatever the URI says: a secondary's stale copy would
		// never pass the version check, so it could only cost lost races and retries.
		coll: client.Database(cfg.Database).Collection(cfg.Collection,
			options.Collection().SetReadPreference(readpref.Primary())),
		cfg: cfg,
		opt: opt,
		cas: backends.CAS{
			Store:    "mongodb",
			Attempts: cfg.CASAttempts,
			Backoff:  backends.Backoff{Floor: 50 * time.Microsecond, Step: 200 * time.Microsecond, MaxSteps: 8},
			Jitter:   opt.ExpiryJitter,
		},
		log:  opt.Logger.With("store", "mongodb", "database", cfg.Database, "collection", cfg.Collection),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	bc := &backends.BatchCAS{CAS: s.cas, IO: s, Key: s.key, One: s.one}
	s.batch = backends.NewBatcher(backends.BatchConfig{Store: "mongodb", Round: bc.Round})
	return s, nil
}

// setup pings the server and creates the TTL index, falling back to the sweeper when the
// server does not implement TTL indexes.
func (s *Store) setup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.SetupTimeout)
	defer cancel()
	if err := s.client.Ping(ctx, readpref.Primary()); err != nil {
		return unavailable("mongodb open: ping", err)
	}
	if s.opt.Inspect {
		return nil // no index, no sweeper: the server sets them up when it starts
	}
	if !s.cfg.TTLIndex {
		s.startSweeper()
		return nil
	}
	_, err := s.coll.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "exp", Value: 1}},
		Options: options.Index().SetName("halt_exp_ttl").SetExpireAfterSeconds(0),
	})
	switch {
	case err == nil:
		return nil
	case ttlUnsupported(err):
		s.log.Warn("mongodb: server rejects TTL indexes; expired keys will be removed by a background sweep instead",
			"error", err, "sweep_interval", s.cfg.SweepInterval, "sweep_batch", s.cfg.SweepBatch)
		s.startSweeper()
		return nil
	case isCommandError(err):
		return fmt.Errorf("mongodb open: create TTL index on exp: %w", err)
	default:
		return unavailable("mongodb open: create TTL index on exp", err)
	}
}

// ttlUnsupported recognises servers that speak the protocol but lack TTL indexes
// (FerretDB v1: "(NotImplemented) Index option "expireAfterSeconds" is not implemented yet").
func ttlUnsupported(err error) bool {
	var ce mongo.CommandError
	if !errors.As(err, &ce) {
		return false
	}
	const notImplemented, commandNotSupported, invalidOptions = 238, 115, 72
	return ce.HasErrorCode(notImplemented) || ce.HasErrorCode(commandNotSupported) ||
		(ce.HasErrorCode(invalidOptions) && strings.Contains(ce.Message, "expireAfterSeconds"))
}

func isCommandError(err error) bool {
	var ce mongo.CommandError
	return errors.As(err, &ce)
}

func unavailable(what string, err error) error {
	return fmt.Errorf("%s: %w: %w", what, backends.ErrUnavailable, backends.Redact(err))
}

func (s *Store) key(k string) string { return s.opt.KeyPrefix + k }

// Apply decides the ops with the Apply calls of other goroutines in flight at the same
// time, in one round (backends.BatchCAS): one find of every key, then one conditional
// write per key changed, all at once. The writes are not one bulkWrite: its result counts
// the updates that matched, but does not say which, so an update that lost its race could
// not be told from one that landed, and deciding it again could count a hit twice.
func (s *Store) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	if len(ops) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	return s.batch.Apply(ctx, now, ops)
}

// PeekOps is backends.Peeker: one batched read of the ops' keys, each op decided at cost 0
// on what was read, nothing written (a missing key stays missing), within the store's
// timeout.
func (s *Store) PeekOps(ctx context.Context, now int64, ops []*backends.Op) error {
	if len(ops) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	return backends.PeekBatch(ctx, s, s.key, now, ops)
}

// Rounds is how many rounds the store has run for Apply calls (each one find and its
// writes): fewer than the calls when concurrent calls shared one.
func (s *Store) Rounds() uint64 { return s.batch.Rounds() }

// one is a call for backends.CAS, for an op decided on its own after a lost race.
func (s *Store) one() (backends.Versioned, func()) {
	c := callPool.Get().(*call)
	c.s = s
	return c, func() {
		c.s = nil
		callPool.Put(c)
	}
}

// ReadBatch reads every key with one find ($in; a single key with findOne), from the
// primary.
func (s *Store) ReadBatch(ctx context.Context, keys []string, snaps []*backends.Snapshot) error {
	for _, sn := range snaps {
		sn.Found, sn.Version, sn.Err = false, 0, nil
	}
	if len(keys) == 1 {
		raw, err := s.coll.FindOne(ctx, bson.D{{Key: "_id", Value: keys[0]}}).Raw()
		switch {
		case errors.Is(err, mongo.ErrNoDocuments):
			return nil
		case err != nil:
			return unavailable("mongodb apply: read", err)
		}
		snapshot(keys[0], raw, snaps[0])
		return nil
	}
	cur, err := s.coll.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: keys}}}})
	if err != nil {
		return unavailable("mongodb apply: read", err)
	}
	defer cur.Close(context.WithoutCancel(ctx)) //nolint:errcheck // the read's own error is what counts
	for cur.Next(ctx) {
		id, ok := cur.Current.Lookup("_id").StringValueOK()
		if !ok {
			continue // not one of halt's keys: it cannot match one of ours
		}
		for i, k := range keys {
			if k == id {
				snapshot(k, cur.Current, snaps[i])
				break
			}
		}
	}
	if err := cur.Err(); err != nil {
		return unavailable("mongodb apply: read", err)
	}
	return nil
}

// snapshot decodes the document read at key into sn.
func snapshot(key string, raw bson.Raw, sn *backends.Snapshot) {
	v, err := decodeDoc(raw, &sn.State)
	if err != nil {
		sn.Err = fmt.Errorf("mongodb apply: key %q: %w", key, err)
		return
	}
	sn.Found, sn.Version = true, v
}

// writeWorkers bounds the writes of one round in flight at once (each holds a pooled
// connection while it waits).
const writeWorkers = 64

// WriteBatch makes each write as Write does (an insert, or an update conditional on the
// version read), all at once.
func (s *Store) WriteBatch(ctx context.Context, writes []*backends.Write) {
	backends.Spread(len(writes), writeWorkers, func(i int) {
		w := writes[i]
		c := &call{s: s, found: w.Snap.Found, version: w.Snap.Version}
		w.Won, w.Err = c.Write(ctx, w.Key, w.State, w.Now, w.TTL)
	})
}

// call is one op's I/O for backends.CAS (an op decided again after its round's write lost
// a race; a round's writes): what the last read found (whether there was a document, and
// its version) for the write after it.
type call struct {
	s       *Store
	buf     []byte
	found   bool
	version int64
}

var callPool = sync.Pool{New: func() any { return new(call) }}

// Read reads the document at key (from the primary) and decodes its state and version.
func (c *call) Read(ctx context.Context, key string, st *algorithms.State) (bool, error) {
	c.found = false
	raw, err := c.s.coll.FindOne(ctx, bson.D{{Key: "_id", Value: key}}).Raw()
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return false, nil
	case err != nil:
		return false, unavailable("mongodb apply: read", err)
	}
	if c.version, err = decodeDoc(raw, st); err != nil {
		return false, fmt.Errorf("mongodb apply: key %q: %w", key, err)
	}
	c.found = true
	return true, nil
}

// Write inserts the document (none was read: a duplicate key means another replica
// created it first) or updates it on the condition that its version is still the one
// read. Either way the write fails, and reports false, when it lost the race.
func (c *call) Write(ctx context.Context, key string, st *algorithms.State, now, ttl int64) (bool, error) {
	c.buf = backends.EncodeState(c.buf[:0], st)
	exp := bson.NewDateTimeFromTime(time.UnixMicro(now).Add(backends.TTL(ttl)))
	if !c.found {
		_, err := c.s.coll.InsertOne(ctx, bson.D{
			{Key: "_id", Value: key},
			{Key: "v", Value: int64(1)},
			{Key: "s", Value: bson.Binary{Data: c.buf}},
			{Key: "exp", Value: exp},
		})
		switch {
		case err == nil:
			return true, nil
		case mongo.IsDuplicateKeyError(err):
			return false, nil
		}
		return false, unavailable("mongodb apply: insert", err)
	}
	res, err := c.s.coll.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: key}, {Key: "v", Value: c.version}},
		bson.D{{Key: "$set", Value: bson.D{
			{Key: "v", Value: c.version + 1},
			{Key: "s", Value: bson.Binary{Data: c.buf}},
			{Key: "exp", Value: exp},
		}}})
	if err != nil {
		return false, unavailable("mongodb apply: update", err)
	}
	// No match: someone else wrote (or deleted) the document since we read it.
	return res.MatchedCount == 1, nil
}

// decodeDoc checks a document's shape and decodes its state; anything unexpected is
// ErrCorrupt, never an empty state.
func decodeDoc(raw bson.Raw, st *algorithms.State) (int64, error) {
	vv, err := raw.LookupErr("v")
	if err != nil {
		return 0, fmt.Errorf("%w: document has no version field v", backends.ErrCorrupt)
	}
	var version int64
	switch vv.Type {
	case bson.TypeInt64:
		version = vv.Int64()
	case bson.TypeInt32:
		version = int64(vv.Int32())
	default:
		return 0, fmt.Errorf("%w: version field v is a %s, want an integer", backends.ErrCorrupt, vv.Type)
	}
	sv, err := raw.LookupErr("s")
	if err != nil {
		return 0, fmt.Errorf("%w: document has no state field s", backends.ErrCorrupt)
	}
	_, data, ok := sv.BinaryOK()
	if !ok {
		return 0, fmt.Errorf("%w: state field s is a %s, want binary", backends.ErrCorrupt, sv.Type)
	}
	if len(data) == 0 {
		return 0, fmt.Errorf("%w: state field s is empty", backends.ErrCorrupt)
	}
	if err := backends.DecodeState(data, st); err != nil {
		return 0, err
	}
	return version, nil
}

// Delete removes keys; missing keys are fine.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	ids := make(bson.A, len(keys))
	for i, k := range keys {
		ids[i] = s.key(k)
	}
	if _, err := s.coll.DeleteMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}); err != nil {
		return unavailable("mongodb delete", err)
	}
	return nil
}

// Ping reports whether the primary answers.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	if err := s.client.Ping(ctx, readpref.Primary()); err != nil {
		return unavailable("mongodb ping", err)
	}
	return nil
}

// Close stops the sweeper and disconnects. Later calls return the first result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		started := s.sweeping
		s.mu.Unlock()
		close(s.stop)
		if started {
			<-s.done
		}
		s.batch.Close()
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.SetupTimeout)
		defer cancel()
		if err := s.client.Disconnect(ctx); err != nil {
			s.closeErr = fmt.Errorf("mongodb close: %w", err)
		}
	})
	return s.closeErr
}

// Sweeping reports whether the store removes expired documents itself (because the
// server has no TTL indexes, or ttl_index=false).
func (s *Store) Sweeping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sweeping
}

func (s *Store) startSweeper() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.sweeping {
		return
	}
	s.sweeping = true
	go s.sweepLoop()
}

func (s *Store) sweepLoop() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.SweepInterval)
			if n, err := s.Sweep(ctx, time.Now()); err != nil {
				s.log.Warn("mongodb: sweep of expired keys failed", "error", err, "removed", n)
			} else if n > 0 {
				s.log.Debug("mongodb: swept expired keys", "removed", n)
			}
			cancel()
		}
	}
}

// maxSweepRounds bounds one Sweep; what is left waits for the next tick.
const maxSweepRounds = 100

// Sweep deletes documents whose expiry is before now, in batches of SweepBatch, and
// returns how many it deleted. The delete re-checks exp so a document refreshed between
// the find and the delete survives; a document deleted under a concurrent update only
// makes that update's compare-and-swap miss and retry on a fresh state.
func (s *Store) Sweep(ctx context.Context, now time.Time) (int64, error) {
	cutoff := bson.D{{Key: "$lt", Value: bson.NewDateTimeFromTime(now)}}
	var total int64
	for round := 0; round < maxSweepRounds; round++ {
		cur, err := s.coll.Find(ctx, bson.D{{Key: "exp", Value: cutoff}},
			options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}).SetLimit(int64(s.cfg.SweepBatch)))
		if err != nil {
			return total, unavailable("mongodb sweep: find", err)
		}
		var ids bson.A
		for cur.Next(ctx) {
			ids = append(ids, cur.Current.Lookup("_id"))
		}
		err = cur.Err()
		_ = cur.Close(ctx)
		if err != nil {
			return total, unavailable("mongodb sweep: find", err)
		}
		if len(ids) == 0 {
			return total, nil
		}
		res, err := s.coll.DeleteMany(ctx, bson.D{
			{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}},
			{Key: "exp", Value: cutoff},
		})
		if err != nil {
			return total, unavailable("mongodb sweep: delete", err)
		}
		total += res.DeletedCount
		if len(ids) < s.cfg.SweepBatch {
			return total, nil
		}
	}
	return total, nil
}
