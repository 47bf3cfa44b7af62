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

// Defaults for the settings the store URL may override.
const (
	// DefaultMaxAttempts bounds the conditional-write loop of one op. Each lost race means
	// another replica made progress on the key; past the budget the op fails with
	// backends.ErrContention instead of burning write capacity until the deadline.
	DefaultMaxAttempts = 12
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
	// MaxAttempts bounds the conditional writes of one op; SDKAttempts the SDK's own
	// attempts per request.
	MaxAttempts, SDKAttempts int
	// SetupTimeout bounds Open.
	SetupTimeout time.Duration
}

// Store is the DynamoDB backend.
type Store struct {
	client *ddb.Client
	cfg    Config
	opt    backends.Options
	log    *slog.Logger
	table  *string
	tr     *http.Transport
	closed atomic.Bool
}

// ParseURL reads dynamodb://TABLE?region=...&endpoint=...&create_table=...&consistent_read=...
// &max_attempts=...&sdk_attempts=...&setup_timeout=...&access_key_id=...&secret_access_key=...
func ParseURL(raw string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Config{}, fmt.Errorf("dynamodb URL: %w", backends.Redact(err))
	}
	if u.Scheme != "dynamodb" {
		return Config{}, fmt.Errorf("dynamodb URL: scheme %q is not dynamodb", u.Scheme)
	}
	cfg := Config{
		Table:          u.Host,
		CreateTable:    true,
		ConsistentRead: true,
		MaxAttempts:    DefaultMaxAttempts,
		SDKAttempts:    DefaultSDKAttempts,
		SetupTimeout:   DefaultSetupTimeout,
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		return Config{}, fmt.Errorf("dynamodb URL: want dynamodb://TABLE?options, got a path %q", u.Path)
	}
	if cfg.Table == "" {
		return Config{}, fmt.Errorf("dynamodb URL: no table name (want dynamodb://TABLE?region=...)")
	}
	q, err := backends.NewQuery("dynamodb", u)
	if err != nil {
		return Config{}, err
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
	cfg.MaxAttempts = q.Int("max_attempts", cfg.MaxAttempts, 1, 1000)
	cfg.SDKAttempts = q.Int("sdk_attempts", cfg.SDKAttempts, 1, 1000)
	cfg.SetupTimeout = q.Duration("setup_timeout", cfg.SetupTimeout, time.Millisecond)
	cfg.AccessKeyID, cfg.SecretAccessKey = q.String("access_key_id", ""), q.String("secret_access_key", "")
	if err := q.Err(); err != nil {
		return Config{}, err
	}
	if (cfg.AccessKeyID == "") != (cfg.SecretAccessKey == "") {
		return Config{}, fmt.Errorf("dynamodb URL: access_key_id and secret_access_key go together")
	}
	return cfg, nil
}

// Open loads AWS configuration, makes sure the table exists with TTL on exp (unless
// create_table=false) and returns the store. An unreachable endpoint fails with an error
// wrapping backends.ErrUnavailable within the setup timeout.
func Open(ctx context.Context, rawURL string, opt backends.Options) (*Store, error) {
	cfg, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, setupTimeout(cfg))
	defer cancel()
	s, err := New(ctx, cfg, opt)
	if err != nil {
		return nil, err
	}
	if err := s.setup(ctx); err != nil {
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
	opt = opt.Defaults()
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
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
	return &Store{
		client: client,
		cfg:    cfg,
		opt:    opt,
		log:    opt.Logger.With("store", "dynamodb", "table", cfg.Table, "region", awsCfg.Region),
		table:  aws.String(cfg.Table),
		tr:     tr,
	}, nil
}

// setup creates the table when missing (on-demand billing), waits until it is ACTIVE and
// enables TTL on exp. With create_table=false it only checks.
func (s *Store) setup(ctx context.Context) error {
	out, err := s.client.DescribeTable(ctx, &ddb.DescribeTableInput{TableName: s.table})
	var nf *types.ResourceNotFoundException
	switch {
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
		if out.Table.TableStatus != types.TableStatusActive {
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

// Apply decides the ops one after another, so that the same key twice in one batch is
// applied in order; each op is its own conditional write.
func (s *Store) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	if len(ops) == 0 {
		return nil
	}
	if s.closed.Load() {
		return backends.FailAll(ops, fmt.Errorf("dynamodb apply: %w: store closed", backends.ErrUnavailable))
	}
	ctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	defer cancel()
	var first error
	var st algorithms.State
	for _, op := range ops {
		op.Result, op.Err = algorithms.Result{}, nil
		r, err := s.apply(ctx, now, op, &st)
		if err != nil {
			op.Err = err
			if first == nil {
				first = err
			}
			continue
		}
		op.Result = r
	}
	return first
}

// apply is one op's loop: read (strongly consistent), decide in Go, write back on the
// condition that the version is still the one read. A failed condition returns the
// current item (ALL_OLD), so a retry decides again without another read.
func (s *Store) apply(ctx context.Context, now int64, op *backends.Op, st *algorithms.State) (algorithms.Result, error) {
	key := s.key(op.Key)
	keyAttr := map[string]types.AttributeValue{attrKey: &types.AttributeValueMemberS{Value: key}}
	item, err := s.get(ctx, keyAttr, s.cfg.ConsistentRead)
	if err != nil {
		return algorithms.Result{}, err
	}
	for attempt := 0; attempt < s.cfg.MaxAttempts; attempt++ {
		if attempt > 0 {
			if err := backoff(ctx, attempt); err != nil {
				return algorithms.Result{}, classify("dynamodb apply", err)
			}
		}
		exists := item != nil
		var version int64
		if exists {
			if version, err = decodeItem(item, st); err != nil {
				return algorithms.Result{}, fmt.Errorf("dynamodb apply: key %q: %w", key, err)
			}
		} else {
			st.Reset()
		}
		before := st.Mark()
		r := algorithms.Decide(op.Algorithm, st, now, &op.Limit, op.Cost)
		if before == st.Mark() && (exists || st.IsZero()) {
			// Nothing changed: the read was a consistent snapshot, so the decision stands
			// without a write (check-only requests and denials cost one read).
			return r, nil
		}
		exp := time.UnixMicro(now).Add(backends.TTL(r.TTL))
		in := &ddb.PutItemInput{
			TableName: s.table,
			Item: map[string]types.AttributeValue{
				attrKey:     keyAttr[attrKey],
				attrVersion: &types.AttributeValueMemberN{Value: strconv.FormatInt(version+1, 10)},
				attrState:   &types.AttributeValueMemberB{Value: backends.EncodeState(nil, st)},
				attrExpiry:  &types.AttributeValueMemberN{Value: strconv.FormatInt(ceilSeconds(exp), 10)},
			},
			ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld,
		}
		if exists {
			in.ConditionExpression = aws.String("#v = :v")
			in.ExpressionAttributeNames = map[string]string{"#v": attrVersion}
			in.ExpressionAttributeValues = map[string]types.AttributeValue{
				":v": &types.AttributeValueMemberN{Value: strconv.FormatInt(version, 10)},
			}
		} else {
			in.ConditionExpression = aws.String("attribute_not_exists(#k)")
			in.ExpressionAttributeNames = map[string]string{"#k": attrKey}
		}
		_, err := s.client.PutItem(ctx, in)
		if err == nil {
			return r, nil
		}
		var ccf *types.ConditionalCheckFailedException
		if !errors.As(err, &ccf) {
			return algorithms.Result{}, classify("dynamodb apply: write", err)
		}
		// Lost the race. The failed check carries the item as it is now; without it
		// (deleted meanwhile, or an emulator that does not return it) read again.
		if len(ccf.Item) > 0 {
			item = ccf.Item
		} else if item, err = s.get(ctx, keyAttr, true); err != nil {
			return algorithms.Result{}, err
		}
	}
	return algorithms.Result{}, fmt.Errorf("dynamodb apply: key %q after %d conditional writes: %w", key, s.cfg.MaxAttempts, backends.ErrContention)
}

func (s *Store) get(ctx context.Context, keyAttr map[string]types.AttributeValue, consistent bool) (map[string]types.AttributeValue, error) {
	out, err := s.client.GetItem(ctx, &ddb.GetItemInput{TableName: s.table, Key: keyAttr, ConsistentRead: aws.Bool(consistent)})
	if err != nil {
		return nil, classify("dynamodb apply: read", err)
	}
	if len(out.Item) == 0 {
		return nil, nil
	}
	return out.Item, nil
}

func ceilSeconds(t time.Time) int64 {
	sec := t.Unix()
	if t.Nanosecond() > 0 {
		sec++
	}
	return sec
}

// backoff sleeps a short random time so that replicas racing on one key spread out.
func backoff(ctx context.Context, attempt int) error {
	return backends.Backoff{Floor: 100 * time.Microsecond, Step: 500 * time.Microsecond, MaxSteps: 8}.Wait(ctx, attempt)
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
			if err := backoff(ctx, attempt+1); err != nil {
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
		s.tr.CloseIdleConnections()
	}
	return nil
}
