package authz

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/halt-envoy/halt-envoy/internal/abuse"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/observe"
)

// The bounds of the record of detections a server keeps (per replica): the identities
// most recently detected, and the last detections of each.
const (
	DefaultDetectionIdentities   = 10000
	DefaultDetectionsPerIdentity = 8
)

// The identities the detectors charge (abuse.AddressKey, APIKeyKey, CustomerKey), as
// one-entry descriptors.

// customerEntries is the identified caller as the spike detector charges it: its
// customer (an API key's, a header's value, or "ip:ADDR", IPv6 by its network).
func customerEntries(c string) []config.Entry {
	return []config.Entry{{Key: abuse.CustomerKey, Value: c}}
}

// addressEntries is the source address r.addr (abuse.Address) as invalid_key_penalty
// and the address-keyed detectors charge it.
func addressEntries(addr string) []config.Entry {
	return []config.Entry{{Key: abuse.AddressKey, Value: addr}}
}

func keyEntries(sum string) []config.Entry {
	return []config.Entry{{Key: abuse.APIKeyKey, Value: sum}}
}

// abusePenalty is the penalty policy the abuse detectors feed, nil without an abuse
// block. A name the rate-limit config lacks is refused where both configs are loaded
// (Config.Resolve, on either's reload); the throttled warning below is left for what
// that cannot see, e.g. rules given to New that were never resolved against the file.
func (s *Server) abusePenalty(cfg *Config, set *config.Set) *config.PenaltyPolicy {
	if cfg.Abuse == nil {
		return nil
	}
	pol, ok := set.PenaltyPolicy(cfg.Abuse.Penalty)
	if !ok {
		if ok, held := s.penaltyLog.Allow(time.Now()); ok {
			s.log.Warn("abuse.penalty names no penalty of the rate-limit config: the abuse detectors are off", "penalty", cfg.Abuse.Penalty, "similar_suppressed", held)
		}
		return nil
	}
	return pol
}

// detect runs the detectors that judge the identification: fanout (a dimension's
// values against the source address or the caller), spike (the caller's rate against
// its baseline) and network_change (the source's network against the key that
// identified the caller). The lockout of an identity other than the address is read
// first, once per call. It returns the 403 to answer when a detection (or an earlier
// one) locks the caller out.
func (s *Server) detect(ctx context.Context, cfg *Config, pol *config.PenaltyPolicy, r *request, id *identity, fail idFailure) *authv3.CheckResponse {
	ab := cfg.Abuse
	customerRead := false // the caller's lockout was read (by fanout per customer)
	if f := ab.Fanout; f != nil {
		if resp := s.detectFanout(ctx, cfg, pol, f, r, id, fail); resp != nil {
			return resp
		}
		customerRead = f.Per.Value == abuse.CustomerKey && id != nil
	}
	if sp := ab.Spike; sp != nil && id != nil {
		if resp := s.detectSpike(ctx, cfg, pol, sp, id, !customerRead); resp != nil {
			return resp
		}
	}
	if n := ab.NetworkChange; n != nil && id != nil && id.keyed() && r.source != "" {
		keySum := id.keySum()
		who := keyEntries(keySum)
		if !ab.DryRun {
			if locked := s.lockedOut(ctx, cfg, pol, who, 0, abuseLockout); locked != nil {
				return locked
			}
		}
		network := n.NetworkOf(r.source)
		if network == "" {
			return nil
		}
		seen, err := s.engine.Distinct(ctx, cfg.Domain, who, abuse.NetworkChange, network, n.Window, n.Max)
		if s.storeFailed(err) {
			return nil
		}
		if seen.Over {
			detail := fmt.Sprintf("one API key from %d networks in %s (max %d; the last %s)", seen.Count, n.Window, n.Max, network)
			return s.charge(ctx, cfg, pol, abuse.NetworkChange, &n.Detector, who, abuse.APIKeyKey+"="+keySum, seen.Count, detail)
		}
	}
	return nil
}

// detectFanout counts the request's value of the fanout detector's dimension for its
// identity (the source address, or the identified caller, whose lockout is read first),
// and charges the identity when the distinct values go past max in the window.
func (s *Server) detectFanout(ctx context.Context, cfg *Config, pol *config.PenaltyPolicy, f *abuse.FanoutDetector, r *request, id *identity, fail idFailure) *authv3.CheckResponse {
	var who []config.Entry
	var identity, per string
	switch f.Per.Value {
	case abuse.CustomerKey:
		if id == nil {
			return nil
		}
		who, identity, per = customerEntries(id.customer), abuse.CustomerKey+"="+id.customer, "caller"
		if !cfg.Abuse.DryRun {
			if locked := s.lockedOut(ctx, cfg, pol, who, 0, abuseLockout); locked != nil {
				return locked
			}
		}
	default:
		if r.addr == "" {
			return nil
		}
		who, identity, per = addressEntries(r.addr), abuse.AddressKey+"="+r.addr, "address"
	}
	value := fanoutValue(f.Count.Value, r, id, fail)
	if value == "" {
		return nil
	}
	seen, err := s.engine.Distinct(ctx, cfg.Domain, who, f.StoreName(), value, f.Window, f.Max)
	if s.storeFailed(err) || !seen.Over {
		return nil
	}
	detail := fmt.Sprintf("%d distinct %s from one %s in %s (max %d)", seen.Count, f.Noun(), per, f.Window, f.Max)
	return s.charge(ctx, cfg, pol, abuse.Fanout, &f.Detector, who, identity, seen.Count, detail)
}

// fanoutValue is the request's value of dimension dim as fanout stores it, "" for none:
// the API key presented by its SHA-256 (valid or not), else a value's SHA-256 cut to
// 128 bits, so that a long path or header costs the store no more than a key does.
func fanoutValue(dim string, r *request, id *identity, fail idFailure) string {
	var v string
	switch dim {
	case abuse.DimAPIKey:
		// The key that identified the caller, else the invalid one presented, also when
		// the anonymous fallback served the call.
		if id != nil && id.keyed() {
			return id.keySum()
		}
		return fail.keySum()
	case abuse.DimPath:
		v = r.path
	case abuse.DimUser:
		v = basicUser(r.header("authorization"))
	default:
		v = r.header(strings.TrimPrefix(dim, abuse.DimHeader))
	}
	if v == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(v))
	return hex.EncodeToString(sum[:16])
}

// basicUser is the user name of an "Authorization: Basic" value ("" for another scheme
// or a value that does not decode).
func basicUser(auth string) string {
	scheme, cred, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "basic") {
		return ""
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return ""
	}
	user, _, _ := strings.Cut(string(raw), ":")
	return user
}

// detectSpike judges the identified caller's rate: its requests in the short window
// against factor times what its baseline predicts (at least min). The caller's lockout
// is read first (readLockout: unless fanout read it in this call); a spike is detected
// at most once per short window (a fixed-window marker), so one burst is one detection.
func (s *Server) detectSpike(ctx context.Context, cfg *Config, pol *config.PenaltyPolicy, sp *abuse.Spike, id *identity, readLockout bool) *authv3.CheckResponse {
	who := customerEntries(id.customer)
	if readLockout && !cfg.Abuse.DryRun {
		if locked := s.lockedOut(ctx, cfg, pol, who, 0, abuseLockout); locked != nil {
			return locked
		}
	}
	rate, err := s.engine.Rates(ctx, cfg.Domain, who, abuse.SpikeDetector, sp.Window, sp.HalfLife)
	if s.storeFailed(err) {
		return nil
	}
	threshold := sp.Threshold(rate.Decayed)
	if float64(rate.Short) <= threshold {
		return nil
	}
	first, err := s.engine.Distinct(ctx, cfg.Domain, who, abuse.SpikeDetector+"-once", "spike", sp.Window, abuse.MaxCount)
	if s.storeFailed(err) || !first.New {
		return nil
	}
	detail := fmt.Sprintf("%d requests in %s; the baseline (EWMA, half-life %s: %.1f in %s) allows %.0f (factor %g, min %d)",
		rate.Short, sp.Window, sp.HalfLife, sp.Expected(rate.Decayed), sp.Window, threshold, sp.Factor, sp.Min)
	d := &abuse.Detector{Window: sp.Window, Max: int64(threshold), Severity: sp.Severity}
	return s.charge(ctx, cfg, pol, abuse.SpikeDetector, d, who, abuse.CustomerKey+"="+id.customer, rate.Short, detail)
}

// authFailure counts a 401 or 403 answered to the request's source address (r.addr),
// and charges the abuse penalty ab when they go past auth_failures.max in its window.
// check calls it with the answer decided, and only for an answer that is not the
// address's own lockout (addressLockout): a locked-out client would otherwise be
// detected again at every call. The answer it follows stands.
func (s *Server) authFailure(ctx context.Context, cfg *Config, ab *config.PenaltyPolicy, r *request) {
	if ab == nil || cfg.Abuse.AuthFailures == nil || r.addr == "" {
		return
	}
	d := cfg.Abuse.AuthFailures
	n, over, err := s.engine.Events(ctx, cfg.Domain, addressEntries(r.addr), abuse.AuthFailures, d.Window, d.Max)
	if s.storeFailed(err) || !over {
		return
	}
	detail := fmt.Sprintf("more than %d answers 401 or 403 to one address in %s", d.Max, d.Window)
	s.charge(ctx, cfg, ab, abuse.AuthFailures, d, addressEntries(r.addr), abuse.AddressKey+"="+r.addr, n, detail)
}

// addressLockout reports whether policy, a refusal's violated_policy, is the lockout of
// the abuse penalty ab or of invalid_key_penalty.
func addressLockout(cfg *Config, ab *config.PenaltyPolicy, policy string) bool {
	name, ok := strings.CutPrefix(policy, "penalty:")
	return ok && ((ab != nil && name == ab.Name) || (cfg.InvalidKeyPenalty != "" && name == cfg.InvalidKeyPenalty))
}

// storeFailed logs (throttled) a detector's store failure: the call goes on
// undetected, as an address lockout fails open.
func (s *Server) storeFailed(err error) bool {
	if err == nil {
		return false
	}
	if ok, held := s.penaltyLog.Allow(time.Now()); ok {
		s.log.Warn("abuse detector unavailable", "err", err, "similar_suppressed", held)
	}
	return true
}

// charge acts on one detection: in dry run it is only logged, counted and recorded;
// otherwise the detector's severity is charged to the identity under the abuse penalty,
// and the 403 is returned when that locks it out.
func (s *Server) charge(ctx context.Context, cfg *Config, pol *config.PenaltyPolicy, detector string, d *abuse.Detector, who []config.Entry, identity string, count int64, detail string) *authv3.CheckResponse {
	det := abuse.Detection{Detector: detector, At: s.engine.Now().UTC(), Identity: identity, Count: count, Max: d.Max,
		Window: d.Window.String(), DryRun: cfg.Abuse.DryRun, Detail: detail}
	mode := "enforce"
	var resp *authv3.CheckResponse
	if cfg.Abuse.DryRun {
		mode = "dry_run"
	} else {
		det.Severity = d.Severity
		locked, left, err := s.engine.Penalize(ctx, cfg.Domain, who, pol, d.Severity)
		if s.storeFailed(err) {
			return nil
		}
		if locked {
			det.Locked = true
			resp = lockout(pol, left, abuseLockout)
		}
	}
	s.metrics.AbuseDetections.WithLabelValues(detector, mode).Inc()
	s.detections.Add(cfg.Domain, det)
	if ok, held := s.detectionLog[detector].Allow(time.Now()); ok {
		msg := "abuse detected"
		if det.DryRun {
			msg = "abuse detected (dry run: not penalised)"
		}
		// The identity as a short hash, as every other log line has it: an address or a
		// key hash in full is the admin API's to show.
		s.log.Info(msg, "detector", detector, "identity", observe.IdentityHash(who), "count", count, "max", d.Max, "window", d.Window,
			"severity", det.Severity, "penalty", pol.Name, "locked", det.Locked, "similar_suppressed", held)
	}
	return resp
}
