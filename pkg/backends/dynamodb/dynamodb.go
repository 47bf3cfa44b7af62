// Package dynamodb keeps halt-envoy's rate-limit state in Amazon DynamoDB: one item per
// key, every decision made in Go by algorithms.Decide and written back with a conditional
// write on a version attribute, so each op is atomic on its key across every replica.
//
// An item is {pk (S): key, v (N): version, s (B): backends.EncodeState, exp (N): unix
// seconds}; exp is the table's TTL attribute, so DynamoDB deletes idle keys by itself.
package dynamodb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// Attribute names of an item.
const (
	attrKey     = "pk"
	attrVersion = "v"
	attrState   = "s"
	attrExpiry  = "exp"
)

// DefaultTimeout bounds each call unless Options.Timeout says otherwise. A decision is
// two HTTPS requests (GetItem, then a conditional PutItem) of single-digit milliseconds
// each, more under contention, so the 15 ms of the in-memory stores would fail open under
// ordinary load (docs/backends.md has the measurement). It is above Envoy's default
// 20 ms filter timeout: raise that one (docs/envoy.md); halt warns at start when it does
// not fit.
const DefaultTimeout = 100 * time.Millisecond

// Defaults for the settings the store URL may override.
const (
	// DefaultSDKAttempts is how many times the SDK itself tries one request (throttling,
	// 5xx, connection resets). Kept low: the op's deadline is tight and the engine's
	// failure mode is the better answer to a struggling table than a long retry storm.
	DefaultSDKAttempts = 2
	// DefaultSetupTimeout bounds Open: credentials, table creation and waiting for the
	// table to become ACTIVE.
	DefaultSetupTimeout = 2 * time.Minute
	// localRegion is used with an explicit endpoint when no region is configured
	// anywhere (DynamoDB Local accepts any region).
	localRegion = "us-east-1"
)

// Config holds the DynamoDB-specific settings, normally parsed from the store URL.
type Config struct {
	// Table holds the items.
	Table string
	// Region and Endpoint override the SDK's defaults; Endpoint is for DynamoDB Local and
	// other emulators (http://127.0.0.1:8000).
	Region, Endpoint string
	// AccessKeyID and SecretAccessKey give static credentials, meant for local emulators
	// only; production uses the SDK's default chain (env, profile, IRSA, instance role).
	AccessKeyID, SecretAccessKey string
	// CreateTable creates a missing table (on-demand billing) and enables TTL on exp.
	// When false the table must exist and its TTL setting is only checked.
	CreateTable bool
	// ConsistentRead makes the first read of each op strongly consistent. An eventually
	// consistent read costs half as much but, when stale, costs a failed conditional
	// write (billed as a write) and a retry instead.
	ConsistentRead bool
	// CASAttempts bounds the compare-and-swap rounds (conditional writes) of one op (zero
	// means backends.DefaultCASAttempts); SDKAttempts the SDK's own attempts per request.
	CASAttempts, SDKAttempts int
	// SetupTimeout bounds Open.
	SetupTimeout time.Duration
}

// Store is the DynamoDB backend.
type Store struct {
	client *ddb.Client
	cfg    Config
	opt    backends.Options
	cas    backends.CAS
	batch  *backends.Batcher
	log    *slog.Logger
	table  *string
	// insertSQL and updateSQL are the PartiQL statements of a round's writes
	// (writeStatements): create the item if absent; update it if still at a version.
	insertSQL, updateSQL string
	tr                   *http.Transport
	closed               atomic.Bool
	// readsPerCall and writesPerCall are set when IAM refused BatchGetItem, or the
	// PartiQL writes of BatchExecuteStatement: a role written for the store before it
	// batched grants only GetItem and PutItem, and an upgrade must not turn it into a
	// store that fails every round. From then on the store reads (writes) key by key.
	readsPerCall, writesPerCall atomic.Bool
}

// ParseURL reads dynamodb://TABLE?region=...&endpoint=...&create_table=...&consistent_read=...
// &cas_attempts=...&sdk_attempts=...&setup_timeout=...&access_key_id=...&secret_access_key=...
// (max_attempts is the old name of cas_attempts).
func ParseURL(raw string) (Config, error) {
	cfg, _, err := parseURL(raw)
	return cfg, err
}

// parseURL is ParseURL that also returns the query, whose renamed options Open warns of.
func parseURL(raw string) (Config, *backends.Query, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Config{}, nil, fmt.Errorf("dynamodb URL: %w", backends.Redact(err))
	}
	if u.Scheme != "dynamodb" {
		return Config{}, nil, fmt.Errorf("dynamodb URL: scheme %q is not dynamodb", u.Scheme)
	}
	cfg := Config{
		Table:          u.Host,
		CreateTable:    true,
		ConsistentRead: true,
		CASAttempts:    backends.DefaultCASAttempts,
		SDKAttempts:    DefaultSDKAttempts,
		SetupTimeout:   DefaultSetupTimeout,
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		return Config{}, nil, fmt.Errorf("dynamodb URL: want dynamodb://TABLE?options, got a path %q", u.Path)
	}
	if cfg.Table == "" {
		return Config{}, nil, fmt.Errorf("dynamodb URL: no table name (want dynamodb://TABLE?region=...)")
	}
	q, err := backends.NewQuery("dynamodb", u)
	if err != nil {
		return Config{}, nil, err
	}
	cfg.Region = q.String("region", "")
	cfg.Endpoint = q.String("endpoint", "")
	if cfg.Endpoint != "" {
		if e, err := url.Parse(cfg.Endpoint); err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
			q.Invalid("endpoint", "an http(s) URL such as http://127.0.0.1:8000")
		}
	}
	cfg.CreateTable = q.Bool("create_table", cfg.CreateTable)
	cfg.ConsistentRead = q.Bool("consistent_read", cfg.ConsistentRead)
	q.Alias("max_attempts", "cas_attempts")
	cfg.CASAttempts = q.Int("cas_attempts", cfg.CASAttempts, 1, backends.MaxCASAttempts)
	cfg.SDKAttempts = q.Int("sdk_attempts", cfg.SDKAttempts, 1, 1000)
	cfg.SetupTimeout = q.Duration("setup_timeout", cfg.SetupTimeout, time.Millisecond)
	cfg.AccessKeyID, cfg.SecretAccessKey = q.String("access_key_id", ""), q.String("secret_access_key", "")
	if err := q.Err(); err != nil {
		return Config{}, nil, err
	}
	if (cfg.AccessKeyID == "") != (cfg.SecretAccessKey == "") {
		return Config{}, nil, fmt.Errorf("dynamodb URL: access_key_id and secret_access_key go together")
	}
	return cfg, q, nil
}

// Open loads AWS configuration, makes sure the table exists with TTL on exp (unless
// create_table=false) and returns the store. An unreachable endpoint fails with an error
// wrapping backends.ErrUnavailable within the setup timeout.
func Open(ctx context.Context, rawURL string, opt backends.Options) (*Store, error) {
	cfg, q, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	q.WarnRenamed(opt.Defaults(DefaultTimeout).Logger)
	ctx, cancel := context.WithTimeout(ctx, setupTimeout(cfg))
	defer cancel()
	s, err := New(ctx, cfg, opt)
	if err != nil {
		return nil, err
	}
	if err := s.setup(ctx); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

func setupTimeout(cfg Config) time.Duration {
	if cfg.SetupTimeout > 0 {
		return cfg.SetupTimeout
	}
	return DefaultSetupTimeout
}

// New builds a client for cfg without touching the table (Open also prepares it).
func New(ctx context.Context, cfg Config, opt backends.Options) (*Store, error) {
	opt = opt.Defaults(DefaultTimeout)
	if cfg.CASAttempts <= 0 {
		cfg.CASAttempts = backends.DefaultCASAttempts
	}
	if cfg.SDKAttempts <= 0 {
		cfg.SDKAttempts = DefaultSDKAttempts
	}
	cfg.SetupTimeout = setupTimeout(cfg)
	var loads []func(*config.LoadOptions) error
	if cfg.Region != "" {
		loads = append(loads, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKeyID != "" {
		loads = append(loads, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, loads...)
	if err != nil {
		return nil, fmt.Errorf("dynamodb open: load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		if cfg.Endpoint == "" {
			return nil, fmt.Errorf("dynamodb open: no region (set region= in the URL or AWS_REGION)")
		}
		awsCfg.Region = localRegion
	}
	// The op deadline is what bounds a call; the retryer only decides how many attempts
	// fit in it. No client-side retry quota: its token bucket would turn an outage into
	// "retry quota exceeded" errors long after the table recovered.
	maxBackoff := opt.Timeout / 2
	if maxBackoff > time.Second {
		maxBackoff = time.Second
	}
	retryer := retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = cfg.SDKAttempts
		o.MaxBackoff = maxBackoff
		o.RateLimiter = ratelimit.None
	})
	// The SDK's transport keeps 10 idle connections per host; a busy replica runs more
	// ops than that in parallel, and every extra one would pay a new TCP (+TLS) handshake.
	tr := awshttp.NewBuildableClient().GetTransport()
	tr.MaxIdleConns = 256
	tr.MaxIdleConnsPerHost = 256
	client := ddb.NewFromConfig(awsCfg, func(o *ddb.Options) {
		o.HTTPClient = &http.Client{Transport: tr}
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.Retryer = retryer
		// DynamoDB Local's responses sometimes fail the SDK's CRC32 check, which only logs
		// a warning; the check guards against corruption in transit, which TLS covers.
		o.DisableValidateResponseChecksum = true
	})
	s := &Store{
		client: client,
		cfg:    cfg,
		opt:    opt,
		cas: backends.CAS{
			Store:    "dynamodb",
			Attempts: cfg.CASAttempts,
			Backoff:  backends.Backoff{Floor: 100 * time.Microsecond, Step: 500 * time.Microsecond, MaxSteps: 8},
			Jitter:   opt.ExpiryJitter,
		},
		log:   opt.Logger.With("store", "dynamodb", "table", cfg.Table, "region", awsCfg.Region),
		table: aws.String(cfg.Table),
		tr:    tr,
	}
	t := strconv.Quote(cfg.Table) // a table name is letters, digits, '_', '-' and '.'
	s.insertSQL = `INSERT INTO ` + t + ` VALUE {'` + attrKey + `': ?, '` + attrVersion + `': ?, '` + attrState + `': ?, '` + attrExpiry + `': ?}`
	s.updateSQL = `UPDATE ` + t + ` SET "` + attrVersion + `" = ? SET "` + attrState + `" = ? SET "` + attrExpiry + `" = ? WHERE "` + attrKey + `" = ? AND "` + attrVersion + `" = ?`
	bc := &backends.BatchCAS{CAS: s.cas, IO: s, Key: s.key, One: s.one}
	s.batch = backends.NewBatcher(backends.BatchConfig{Store: "dynamodb", Round: bc.Round})
	return s, nil
}

// setup creates the table when missing (on-demand billing), waits until it is ACTIVE and
// enables TTL on exp. With create_table=false it only checks.
func (s *Store) setup(ctx context.Context) error {
	out, err := s.client.DescribeTable(ctx, &ddb.DescribeTableInput{TableName: s.table})
	var nf *types.ResourceNotFoundException
	switch {
	case errors.As(err, &nf) && s.opt.Inspect:
		return fmt.Errorf("dynamodb open: table %q does not exist (halt-envoy creates it when it starts, unless create_table=false)", s.cfg.Table)
	case errors.As(err, &nf) && s.cfg.CreateTable:
		if err := s.createTable(ctx); err != nil {
			return err
		}
	case errors.As(err, &nf):
		return fmt.Errorf("dynamodb open: table %q does not exist and create_table=false", s.cfg.Table)
	case err != nil:
		return classify("dynamodb open: describe table", err)
	default:
		if err := checkSchema(out.Table); err != nil {
			return fmt.Errorf("dynamodb open: table %q: %w", s.cfg.Table, err)
		}
		if out.Table.TableStatus != types.TableStatusActive && !s.opt.Inspect {
			if err := s.waitActive(ctx); err != nil {
				return err
			}
		}
	}
	return s.ensureTTL(ctx)
}

func checkSchema(t *types.TableDescription) error {
	if t == nil || len(t.KeySchema) != 1 || aws.ToString(t.KeySchema[0].AttributeName) != attrKey ||
		t.KeySchema[0].KeyType != types.KeyTypeHash {
		return fmt.Errorf("want a table whose only key is the hash key %q (S)", attrKey)
	}
	for _, a := range t.AttributeDefinitions {
		if aws.ToString(a.AttributeName) == attrKey && a.AttributeType != types.ScalarAttributeTypeS {
			return fmt.Errorf("hash key %q must be a string (S), is %s", attrKey, a.AttributeType)
		}
	}
	return nil
}

func (s *Store) createTable(ctx context.Context) error {
	_, err := s.client.CreateTable(ctx, &ddb.CreateTableInput{
		TableName:            s.table,
		BillingMode:          types.BillingModePayPerRequest,
		AttributeDefinitions: []types.AttributeDefinition{{AttributeName: aws.String(attrKey), AttributeType: types.ScalarAttributeTypeS}},
		KeySchema:            []types.KeySchemaElement{{AttributeName: aws.String(attrKey), KeyType: types.KeyTypeHash}},
	})
	var inUse *types.ResourceInUseException
	switch {
	case err == nil:
		s.log.Info("dynamodb: created table (on-demand billing)")
	case errors.As(err, &inUse):
		// Another replica is creating it right now: wait like it does.
	default:
		return classify("dynamodb open: create table", err)
	}
	return s.waitActive(ctx)
}

func (s *Store) waitActive(ctx context.Context) error {
	w := ddb.NewTableExistsWaiter(s.client, func(o *ddb.TableExistsWaiterOptions) {
		o.MinDelay = 200 * time.Millisecond
		o.MaxDelay = 5 * time.Second
	})
	if err := w.Wait(ctx, &ddb.DescribeTableInput{TableName: s.table}, s.cfg.SetupTimeout); err != nil {
		return classify("dynamodb open: wait for table to become ACTIVE", err)
	}
	return nil
}

// ensureTTL turns on TTL on exp. Expiry only bounds storage (correctness never depends on
// it), so a missing permission or a TTL on another attribute is a warning, not a failure.
func (s *Store) ensureTTL(ctx context.Context) error {
	out, err := s.client.DescribeTimeToLive(ctx, &ddb.DescribeTimeToLiveInput{TableName: s.table})
	if err != nil {
		if isUnavailable(err) {
			return classify("dynamodb open: describe TTL", err)
		}
		s.log.Warn("dynamodb: cannot read the table's TTL setting; idle keys may never be deleted", "error", err)
		return nil
	}
	if d := out.TimeToLiveDescription; d != nil {
		attr := aws.ToString(d.AttributeName)
		on := d.TimeToLiveStatus == types.TimeToLiveStatusEnabled || d.TimeToLiveStatus == types.TimeToLiveStatusEnabling
		switch {
		case on && attr == attrExpiry:
			return nil
		case on:
			s.log.Warn("dynamodb: table TTL is on another attribute; idle keys will not be deleted", "ttl_attribute", attr, "want", attrExpiry)
			return nil
		}
	}
	if s.opt.Inspect {
		return nil // the server turns TTL on when it starts (unless create_table=false)
	}
	if !s.cfg.CreateTable {
		s.log.Warn("dynamodb: TTL is not enabled on exp and create_table=false; idle keys will not be deleted")
		return nil
	}
	_, err = s.client.UpdateTimeToLive(ctx, &ddb.UpdateTimeToLiveInput{
		TableName: s.table,
		TimeToLiveSpecification: &types.TimeToLiveSpecification{
			AttributeName: aws.String(attrExpiry),
			Enabled:       aws.Bool(true),
		},
	})
	switch {
	case err == nil:
		return nil
	case strings.Contains(strings.ToLower(err.Error()), "already enabled"):
		return nil // a concurrent replica won the race
	case isUnavailable(err):
		return classify("dynamodb open: enable TTL", err)
	default:
		s.log.Warn("dynamodb: cannot enable TTL on exp; idle keys will not be deleted", "error", err)
		return nil
	}
}

// throttleCodes are DynamoDB's "slow down" answers: the store is up but will not serve.
var throttleCodes = map[string]bool{
	"ProvisionedThroughputExceededException": true,
	"ThrottlingException":                    true,
	"RequestLimitExceeded":                   true,
	"Throttling":                             true,
	"TooManyRequestsException":               true,
	"LimitExceededException":                 true,
}

// classify wraps every failure to get an answer from DynamoDB as backends.ErrUnavailable,
// naming the cause (timeout, throttled, service error, transport) for the logs.
func classify(what string, err error) error {
	cause := "request failed"
	var ae smithy.APIError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		cause = "timed out"
	case errors.Is(err, context.Canceled):
		cause = "canceled"
	case errors.As(err, &ae) && throttleCodes[ae.ErrorCode()]:
		cause = "throttled (" + ae.ErrorCode() + ")"
	case errors.As(err, &ae):
		cause = "service error (" + ae.ErrorCode() + ")"
	}
	return fmt.Errorf("%s: %w: %s: %w", what, backends.ErrUnavailable, cause, err)
}

// isUnavailable tells transport trouble and throttling (fail Open) from answered
// refusals such as AccessDenied (only warned about during setup).
func isUnavailable(err error) bool {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return throttleCodes[ae.ErrorCode()] || ae.ErrorFault() == smithy.FaultServer
	}
	return true
}

func (s *Store) key(k string) string { return s.opt.KeyPrefix + k }

// Apply decides the ops with the Apply calls of other goroutines in flight at the same
// time, in one round (backends.BatchCAS): one BatchGetItem of every key (100 to a
// request), then one conditional write per key changed, in BatchExecuteStatement
// requests (WriteBatch). The writes are not one TransactWriteItems: a transaction is all
// or nothing (one lost race would fail the others' writes) and costs twice the write
// capacity of single writes.
func (s *Store) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	if len(ops) == 0 {
		return nil
	}
	if s.closed.Load() {
		return backends.FailAll(ops, fmt.Errorf("dynamodb apply: %w: store closed", backends.ErrUnavailable))
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	return s.batch.Apply(ctx, now, ops)
}

// PeekOps is backends.Peeker: one batched read of the ops' keys, each op decided at cost 0
// on what was read, nothing written (a missing key stays missing), within the store's
// timeout. The reads are eventually consistent (half the read capacity of a strongly
// consistent one) whatever consistent_read says: what they read of another region's
// counts arrives by replication, already later than its owner wrote it, and nothing is
// written back on what was read.
func (s *Store) PeekOps(ctx context.Context, now int64, ops []*backends.Op) error {
	if len(ops) == 0 {
		return nil
	}
	if s.closed.Load() {
		return backends.FailAll(ops, fmt.Errorf("dynamodb peek: %w: store closed", backends.ErrUnavailable))
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	return backends.PeekBatch(ctx, eventualReads{s}, s.key, now, ops)
}

// Rounds is how many rounds the store has run for Apply calls (each one batched read
// and its writes): fewer than the calls when concurrent calls shared one.
func (s *Store) Rounds() uint64 { return s.batch.Rounds() }

// one is a call for backends.CAS, for an op decided on its own after a lost race.
func (s *Store) one() (backends.Versioned, func()) {
	c := callPool.Get().(*call)
	c.s = s
	return c, func() {
		*c = call{}
		callPool.Put(c)
	}
}

// eventualReads reads a batch with eventually consistent reads (PeekOps).
type eventualReads struct{ s *Store }

// ReadBatch is Store.ReadBatch with eventually consistent reads.
func (e eventualReads) ReadBatch(ctx context.Context, keys []string, snaps []*backends.Snapshot) error {
	return e.s.readBatch(ctx, keys, snaps, false)
}

// maxBatchGet is BatchGetItem's limit on keys per request.
const maxBatchGet = 100

// ReadBatch reads every key with BatchGetItem, maxBatchGet keys to a request (a single
// key with GetItem), strongly consistent unless consistent_read=false, asking again for
// what DynamoDB leaves unprocessed.
func (s *Store) ReadBatch(ctx context.Context, keys []string, snaps []*backends.Snapshot) error {
	return s.readBatch(ctx, keys, snaps, s.cfg.ConsistentRead)
}

// readBatch is ReadBatch, strongly consistent or not as consistent says.
func (s *Store) readBatch(ctx context.Context, keys []string, snaps []*backends.Snapshot, consistent bool) error {
	if len(keys) == 1 || s.readsPerCall.Load() {
		return s.readEach(ctx, keys, snaps, consistent)
	}
	for _, sn := range snaps {
		sn.Found, sn.Version, sn.Err = false, 0, nil
	}
	at := make(map[string]int, len(keys))
	for i, k := range keys {
		at[k] = i
	}
	for from := 0; from < len(keys); from += maxBatchGet {
		part := keys[from:min(from+maxBatchGet, len(keys))]
		want := make([]map[string]types.AttributeValue, len(part))
		for i, k := range part {
			want[i] = map[string]types.AttributeValue{attrKey: &types.AttributeValueMemberS{Value: k}}
		}
		req := map[string]types.KeysAndAttributes{*s.table: {Keys: want, ConsistentRead: aws.Bool(consistent)}}
		for attempt := 0; len(req) > 0; attempt++ {
			if attempt > 0 {
				if err := s.cas.Backoff.Wait(ctx, attempt); err != nil {
					return classify("dynamodb apply: read", err)
				}
			}
			out, err := s.client.BatchGetItem(ctx, &ddb.BatchGetItemInput{RequestItems: req})
			if action, denied := accessDenied(err, "dynamodb:BatchGetItem"); denied {
				// A read changes nothing: read every key again, one by one.
				s.fallBack(&s.readsPerCall, "BatchGetItem", action, "GetItem", err)
				return s.readEach(ctx, keys, snaps, consistent)
			}
			if err != nil {
				return classify("dynamodb apply: read", err)
			}
			for _, item := range out.Responses[*s.table] {
				k, ok := item[attrKey].(*types.AttributeValueMemberS)
				if !ok {
					continue // not one of halt's keys: it cannot match one of ours
				}
				if i, mine := at[k.Value]; mine {
					s.snapshot(k.Value, item, snaps[i])
				}
			}
			req = out.UnprocessedKeys
		}
	}
	return nil
}

// readEach reads every key with a GetItem of its own, writeWorkers at once: a single key,
// and the path of a role without dynamodb:BatchGetItem.
func (s *Store) readEach(ctx context.Context, keys []string, snaps []*backends.Snapshot, consistent bool) error {
	var mu sync.Mutex
	var first error
	backends.Spread(len(keys), writeWorkers, func(i int) {
		sn := snaps[i]
		sn.Found, sn.Version, sn.Err = false, 0, nil
		out, err := s.client.GetItem(ctx, &ddb.GetItemInput{
			TableName:      s.table,
			Key:            map[string]types.AttributeValue{attrKey: &types.AttributeValueMemberS{Value: keys[i]}},
			ConsistentRead: aws.Bool(consistent),
		})
		if err != nil {
			mu.Lock()
			if first == nil {
				first = classify("dynamodb apply: read", err)
			}
			mu.Unlock()
			return
		}
		s.snapshot(keys[i], out.Item, sn)
	})
	return first
}

// PerCall reports whether the store has fallen back from its batched requests to one
// request per key, reads (BatchGetItem refused) and writes (BatchExecuteStatement's
// PartiQL writes refused), because the table's IAM policy does not grant them. The
// decisions are the same either way; the per-call path costs a request per key.
func (s *Store) PerCall() (reads, writes bool) {
	return s.readsPerCall.Load(), s.writesPerCall.Load()
}

// fallBack switches one kind of operation to its per-call path, warning once, naming
// the IAM action that is missing.
func (s *Store) fallBack(flag *atomic.Bool, batch, action, single string, err error) {
	if flag.CompareAndSwap(false, true) {
		s.log.Warn("dynamodb: the IAM policy does not allow "+batch+"; using one "+single+" per key instead (slower, same decisions) until restarted. Grant "+action+" on the table for the batched path",
			"missing_action", action, "error", err)
	}
}

// notAuthorized is the phrase of IAM's refusals ("User: ... is not authorized to perform:
// dynamodb:X on resource: ...").
const notAuthorized = "is not authorized to perform: "

// accessDenied reports whether err is IAM refusing the request (AccessDeniedException,
// or another code whose message says "not authorized"), and the action it names (or
// def when the message names none).
func accessDenied(err error, def string) (string, bool) {
	var ae smithy.APIError
	if err == nil || !errors.As(err, &ae) {
		return "", false
	}
	msg := ae.ErrorMessage()
	switch ae.ErrorCode() {
	case "AccessDeniedException", "AccessDenied":
	default:
		if !strings.Contains(msg, notAuthorized) {
			return "", false
		}
	}
	return deniedAction(msg, def), true
}

// deniedAction is the action an IAM refusal's message names, or def.
func deniedAction(msg, def string) string {
	i := strings.Index(msg, notAuthorized)
	if i < 0 {
		return def
	}
	a := msg[i+len(notAuthorized):]
	if j := strings.IndexAny(a, " ,;"); j >= 0 {
		a = a[:j]
	}
	if !strings.HasPrefix(a, "dynamodb:") || len(a) > 64 {
		return def
	}
	return a
}

// snapshot decodes the item read at key into sn.
func (s *Store) snapshot(key string, item map[string]types.AttributeValue, sn *backends.Snapshot) {
	if len(item) == 0 {
		return
	}
	v, err := decodeItem(item, &sn.State)
	if err != nil {
		sn.Err = fmt.Errorf("dynamodb apply: key %q: %w", key, err)
		return
	}
	sn.Found, sn.Version = true, v
}

// writeWorkers bounds the write requests of one round in flight at once (each holds a
// pooled connection while it waits).
const writeWorkers = 16

// maxBatchStatements is BatchExecuteStatement's limit on statements per request.
const maxBatchStatements = 25

// WriteBatch makes the writes with BatchExecuteStatement, maxBatchStatements to a
// request, the requests at once: each statement is a conditional write of its own (an
// INSERT, refused when the item exists; an UPDATE on the condition that the item is still
// at the version read), answered on its own, billed as the single write it is. One write
// alone is a conditional PutItem (Write).
func (s *Store) WriteBatch(ctx context.Context, writes []*backends.Write) {
	if len(writes) == 1 || s.writesPerCall.Load() {
		s.writeEach(ctx, writes)
		return
	}
	n := (len(writes) + maxBatchStatements - 1) / maxBatchStatements
	backends.Spread(n, writeWorkers, func(i int) {
		s.writeStatements(ctx, writes[i*maxBatchStatements:min((i+1)*maxBatchStatements, len(writes))])
	})
}

// writeEach makes each write with a conditional PutItem of its own, writeWorkers at
// once: a single write, and the path of a role without the PartiQL write actions.
func (s *Store) writeEach(ctx context.Context, writes []*backends.Write) {
	backends.Spread(len(writes), writeWorkers, func(i int) {
		w := writes[i]
		c := &call{s: s, keyAttr: &types.AttributeValueMemberS{Value: w.Key}, found: w.Snap.Found, version: w.Snap.Version}
		w.Won, w.Err = c.Write(ctx, w.Key, w.State, w.Now, w.TTL)
	})
}

// writeStatements sends one BatchExecuteStatement for writes.
func (s *Store) writeStatements(ctx context.Context, writes []*backends.Write) {
	stmts := make([]types.BatchStatementRequest, len(writes))
	for i, w := range writes {
		exp := time.UnixMicro(w.Now).Add(backends.TTL(w.TTL))
		state := &types.AttributeValueMemberB{Value: backends.EncodeState(nil, w.State)}
		expiry := &types.AttributeValueMemberN{Value: strconv.FormatInt(ceilSeconds(exp), 10)}
		key := &types.AttributeValueMemberS{Value: w.Key}
		if !w.Snap.Found {
			stmts[i] = types.BatchStatementRequest{Statement: &s.insertSQL, Parameters: []types.AttributeValue{
				key, &types.AttributeValueMemberN{Value: "1"}, state, expiry}}
			continue
		}
		stmts[i] = types.BatchStatementRequest{Statement: &s.updateSQL, Parameters: []types.AttributeValue{
			&types.AttributeValueMemberN{Value: strconv.FormatInt(w.Snap.Version+1, 10)}, state, expiry,
			key, &types.AttributeValueMemberN{Value: strconv.FormatInt(w.Snap.Version, 10)}}}
	}
	out, err := s.client.BatchExecuteStatement(ctx, &ddb.BatchExecuteStatementInput{Statements: stmts})
	if action, denied := accessDenied(err, "dynamodb:PartiQLInsert/dynamodb:PartiQLUpdate"); denied {
		// Refused as a whole: no statement ran. Every write goes again as a PutItem.
		s.fallBack(&s.writesPerCall, "BatchExecuteStatement's PartiQL writes", action, "PutItem", err)
		s.writeEach(ctx, writes)
		return
	}
	if err == nil && len(out.Responses) != len(writes) {
		err = fmt.Errorf("%w: BatchExecuteStatement answered %d of %d statements", backends.ErrUnavailable, len(out.Responses), len(writes))
	}
	if err != nil {
		err = classify("dynamodb apply: write", err)
		for _, w := range writes {
			w.Err = err
		}
		return
	}
	// IAM may refuse statement by statement (PartiQLInsert granted, PartiQLUpdate not):
	// a refused statement wrote nothing, unlike its neighbours, so only it goes again as
	// a PutItem.
	var refused []*backends.Write
	for i, w := range writes {
		e := out.Responses[i].Error
		switch {
		case e == nil:
			w.Won = true
		case e.Code == types.BatchStatementErrorCodeEnumAccessDenied:
			msg := aws.ToString(e.Message)
			s.fallBack(&s.writesPerCall, "BatchExecuteStatement's PartiQL writes", deniedAction(msg, "dynamodb:PartiQLInsert/dynamodb:PartiQLUpdate"), "PutItem",
				fmt.Errorf("%s: %s", e.Code, msg))
			refused = append(refused, w)
		case e.Code == types.BatchStatementErrorCodeEnumConditionalCheckFailed,
			e.Code == types.BatchStatementErrorCodeEnumDuplicateItem,
			e.Code == types.BatchStatementErrorCodeEnumTransactionConflict:
			// Lost the race (or met a transaction on the item): nothing was written.
		default:
			w.Err = fmt.Errorf("dynamodb apply: write: %w: %s: %s", backends.ErrUnavailable, e.Code, aws.ToString(e.Message))
		}
	}
	if len(refused) > 0 {
		s.writeEach(ctx, refused)
	}
}

// call is one op's I/O for backends.CAS: the version the last read found, for the
// conditional write after it, and the item a failed write returned, for the next read.
type call struct {
	s       *Store
	keyAttr *types.AttributeValueMemberS
	found   bool
	version int64
	// next is the item as a failed condition returned it (ALL_OLD), so the next round
	// decides again without another read; reread makes that read strongly consistent
	// when the failure returned nothing (deleted meanwhile, or an emulator that does not
	// return it).
	next   map[string]types.AttributeValue
	reread bool
}

var callPool = sync.Pool{New: func() any { return new(call) }}

// Read gets the item at key (strongly consistent unless consistent_read=false), or takes
// the one the last failed write returned, and decodes it.
func (c *call) Read(ctx context.Context, key string, st *algorithms.State) (bool, error) {
	if c.keyAttr == nil || c.keyAttr.Value != key {
		c.keyAttr = &types.AttributeValueMemberS{Value: key} // one per op, for its read and write
	}
	item := c.next
	c.next, c.found = nil, false
	if item == nil {
		out, err := c.s.client.GetItem(ctx, &ddb.GetItemInput{
			TableName:      c.s.table,
			Key:            map[string]types.AttributeValue{attrKey: c.keyAttr},
			ConsistentRead: aws.Bool(c.s.cfg.ConsistentRead || c.reread),
		})
		if err != nil {
			return false, classify("dynamodb apply: read", err)
		}
		item = out.Item
	}
	if len(item) == 0 {
		return false, nil
	}
	var err error
	if c.version, err = decodeItem(item, st); err != nil {
		return false, fmt.Errorf("dynamodb apply: key %q: %w", key, err)
	}
	c.found = true
	return true, nil
}

// Write puts the item on the condition that its version is still the one read (or that
// it still does not exist). A failed condition reports false and keeps the item it
// returns for the next Read.
func (c *call) Write(ctx context.Context, key string, st *algorithms.State, now, ttl int64) (bool, error) {
	exp := time.UnixMicro(now).Add(backends.TTL(ttl))
	in := &ddb.PutItemInput{
		TableName: c.s.table,
		Item: map[string]types.AttributeValue{
			attrKey:     c.keyAttr,
			attrVersion: &types.AttributeValueMemberN{Value: strconv.FormatInt(c.version+1, 10)},
			attrState:   &types.AttributeValueMemberB{Value: backends.EncodeState(nil, st)},
			attrExpiry:  &types.AttributeValueMemberN{Value: strconv.FormatInt(ceilSeconds(exp), 10)},
		},
		ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld,
	}
	if c.found {
		in.ConditionExpression = aws.String("#v = :v")
		in.ExpressionAttributeNames = map[string]string{"#v": attrVersion}
		in.ExpressionAttributeValues = map[string]types.AttributeValue{
			":v": &types.AttributeValueMemberN{Value: strconv.FormatInt(c.version, 10)},
		}
	} else {
		c.version = 0 // a new item starts at version 1
		in.ConditionExpression = aws.String("attribute_not_exists(#k)")
		in.ExpressionAttributeNames = map[string]string{"#k": attrKey}
	}
	_, err := c.s.client.PutItem(ctx, in)
	if err == nil {
		return true, nil
	}
	var ccf *types.ConditionalCheckFailedException
	if !errors.As(err, &ccf) {
		return false, classify("dynamodb apply: write", err)
	}
	// Lost the race. The failed check carries the item as it is now.
	c.next, c.reread = ccf.Item, len(ccf.Item) == 0
	return false, nil
}

func ceilSeconds(t time.Time) int64 {
	sec := t.Unix()
	if t.Nanosecond() > 0 {
		sec++
	}
	return sec
}

// decodeItem checks an item's shape and decodes its state; anything unexpected is
// ErrCorrupt, never an empty state.
func decodeItem(item map[string]types.AttributeValue, st *algorithms.State) (int64, error) {
	vn, ok := item[attrVersion].(*types.AttributeValueMemberN)
	if !ok {
		return 0, fmt.Errorf("%w: item has no numeric version attribute %q (got %T)", backends.ErrCorrupt, attrVersion, item[attrVersion])
	}
	version, err := strconv.ParseInt(vn.Value, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: version %q is not an integer", backends.ErrCorrupt, vn.Value)
	}
	sb, ok := item[attrState].(*types.AttributeValueMemberB)
	if !ok {
		return 0, fmt.Errorf("%w: item has no binary state attribute %q (got %T)", backends.ErrCorrupt, attrState, item[attrState])
	}
	if len(sb.Value) == 0 {
		return 0, fmt.Errorf("%w: state attribute %q is empty", backends.ErrCorrupt, attrState)
	}
	if err := backends.DecodeState(sb.Value, st); err != nil {
		return 0, err
	}
	return version, nil
}

// maxBatchWrite is BatchWriteItem's limit on requests per call.
const maxBatchWrite = 25

// Delete removes keys with BatchWriteItem, resubmitting what DynamoDB leaves unprocessed
// until the timeout.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	seen := make(map[string]bool, len(keys))
	var reqs []types.WriteRequest
	for _, k := range keys {
		k = s.key(k)
		if seen[k] { // a batch may not name one key twice
			continue
		}
		seen[k] = true
		reqs = append(reqs, types.WriteRequest{DeleteRequest: &types.DeleteRequest{
			Key: map[string]types.AttributeValue{attrKey: &types.AttributeValueMemberS{Value: k}},
		}})
	}
	for attempt := 0; len(reqs) > 0; attempt++ {
		n := min(len(reqs), maxBatchWrite)
		out, err := s.client.BatchWriteItem(ctx, &ddb.BatchWriteItemInput{
			RequestItems: map[string][]types.WriteRequest{s.cfg.Table: reqs[:n]},
		})
		if err != nil {
			return classify("dynamodb delete", err)
		}
		reqs = append(reqs[n:], out.UnprocessedItems[s.cfg.Table]...)
		if len(out.UnprocessedItems[s.cfg.Table]) > 0 {
			if err := s.cas.Backoff.Wait(ctx, attempt+1); err != nil {
				return classify("dynamodb delete", err)
			}
		}
	}
	return nil
}

// pingKey is read by Ping: a cheap, eventually consistent GetItem proves the table is
// reachable with the configured credentials (DescribeTable is rate limited per account).
const pingKey = "\x00halt-ping"

// Ping reports whether the table answers.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	_, err := s.client.GetItem(ctx, &ddb.GetItemInput{
		TableName: s.table,
		Key:       map[string]types.AttributeValue{attrKey: &types.AttributeValueMemberS{Value: pingKey}},
	})
	if err != nil {
		return classify("dynamodb ping", err)
	}
	return nil
}

// Close closes idle connections; later Apply calls fail with ErrUnavailable.
func (s *Store) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		s.batch.Close()
		s.tr.CloseIdleConnections()
	}
	return nil
}
