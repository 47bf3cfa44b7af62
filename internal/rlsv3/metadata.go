package rlsv3

import (
	"fmt"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/halt-envoy/halt-envoy/internal/engine"
)

// dynamicMetadata is the reference's response dynamic metadata (RESPONSE_DYNAMIC_METADATA),
// field for field:
//
//	domain               the call's domain
//	descriptors          one {entries: ["key=value", ...], limit?, hitsAddend?} per descriptor
//	hitsAddend           the call's hits_addend, when not 0
//	quotaModeEnabled     whether any descriptor matched a quota_mode rule
//	quotaModeViolations  the indices of the quota-mode descriptors over limit, when any
//	metadata             the metadata of the rules matched by descriptors not over limit,
//	                     merged in descriptor order (a key keeps its first value; mappings
//	                     under one key are merged the same way), when any
func dynamicMetadata(req *rlspb.RateLimitRequest, decisions []engine.Decision) *structpb.Struct {
	fields := make(map[string]*structpb.Value, 6)
	fields["domain"] = structpb.NewStringValue(req.GetDomain())
	descs := make([]*structpb.Value, 0, len(req.GetDescriptors()))
	for _, d := range req.GetDescriptors() {
		descs = append(descs, structpb.NewStructValue(descriptorStruct(d)))
	}
	fields["descriptors"] = structpb.NewListValue(&structpb.ListValue{Values: descs})
	if h := req.GetHitsAddend(); h != 0 {
		fields["hitsAddend"] = structpb.NewNumberValue(float64(h))
	}
	quotaMode := false
	var violations []*structpb.Value
	var merged map[string]any
	for i := range decisions {
		dec := &decisions[i]
		r := dec.Rule
		if r == nil {
			continue
		}
		over := dec.Code == engine.CodeOverLimit
		if r.QuotaMode {
			quotaMode = true
			if over {
				violations = append(violations, structpb.NewNumberValue(float64(i)))
			}
		}
		if !over && len(r.Metadata) > 0 {
			if merged == nil {
				merged = map[string]any{}
			}
			mergeInto(merged, r.Metadata)
		}
	}
	fields["quotaModeEnabled"] = structpb.NewBoolValue(quotaMode)
	if len(violations) > 0 {
		fields["quotaModeViolations"] = structpb.NewListValue(&structpb.ListValue{Values: violations})
	}
	if len(merged) > 0 {
		// Config validated every value as a Struct's (internal/config.decoder.metadata).
		if m, err := structpb.NewStruct(merged); err == nil {
			fields["metadata"] = structpb.NewStructValue(m)
		}
	}
	return &structpb.Struct{Fields: fields}
}

// descriptorStruct is one request descriptor as the reference shows it.
func descriptorStruct(d *rlcommon.RateLimitDescriptor) *structpb.Struct {
	f := make(map[string]*structpb.Value, 3)
	entries := make([]*structpb.Value, 0, len(d.GetEntries()))
	for _, e := range d.GetEntries() {
		entries = append(entries, structpb.NewStringValue(e.GetKey()+"="+e.GetValue()))
	}
	f["entries"] = structpb.NewListValue(&structpb.ListValue{Values: entries})
	if l := d.GetLimit(); l != nil {
		// The reference prints the override with the proto's String(), whose spacing the
		// protobuf library randomizes on purpose; this is the same text, spaced stably.
		s := fmt.Sprintf("requests_per_unit:%d unit:%s", l.GetRequestsPerUnit(), l.GetUnit())
		if m := l.GetUnitMultiplier(); m != nil {
			s += fmt.Sprintf(" unit_multiplier:{value:%d}", m.GetValue())
		}
		f["limit"] = structpb.NewStringValue(s)
	}
	if h := d.GetHitsAddend(); h != nil {
		f["hitsAddend"] = structpb.NewNumberValue(float64(h.GetValue()))
	}
	return &structpb.Struct{Fields: f}
}

// mergeInto adds src's keys to dst: a key already there keeps its value, except that two
// mappings under one key are merged the same way. src is never modified (rules are
// shared): a mapping taken from it is copied before anything is merged into it.
func mergeInto(dst, src map[string]any) {
	for k, v := range src {
		cur, ok := dst[k]
		if !ok {
			if m, isMap := v.(map[string]any); isMap {
				c := map[string]any{}
				mergeInto(c, m)
				v = c
			}
			dst[k] = v
			continue
		}
		cm, curMap := cur.(map[string]any)
		sm, srcMap := v.(map[string]any)
		if curMap && srcMap {
			mergeInto(cm, sm)
		}
	}
}
