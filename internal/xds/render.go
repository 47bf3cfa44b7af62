// Package xds is halt's xDS configuration source: it subscribes to the reference
// service's resource type (ratelimit.config.ratelimit.v3.RateLimitConfig) over ADS, State
// of the World, renders every pushed resource as a file of the reference's YAML format,
// and hands the documents to whoever builds the configuration (config.Sources, which
// validates them exactly as files). A push that fails is NACKed with the reason and the
// last good configuration keeps serving; so it does while the management server is away.
package xds

import (
	"errors"
	"fmt"
	"strings"

	rlsconf "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"gopkg.in/yaml.v3"
)

// TypeURL is the resource type the reference's xDS client subscribes to.
const TypeURL = "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig"

// DocPrefix starts the name of every rendered document ("xds:NAME"), so that a problem
// names the resource it is in.
const DocPrefix = "xds:"

// The reference's YAML format (its YamlRoot, YamlDescriptor, YamlRateLimit), in its key
// order, so that a problem's line and column point into a readable document.
type yamlRoot struct {
	Domain      string           `yaml:"domain"`
	Descriptors []yamlDescriptor `yaml:"descriptors,omitempty"`
}

type yamlDescriptor struct {
	Key            string           `yaml:"key"`
	Value          string           `yaml:"value,omitempty"`
	RateLimit      *yamlRateLimit   `yaml:"rate_limit,omitempty"`
	ShadowMode     bool             `yaml:"shadow_mode,omitempty"`
	DetailedMetric bool             `yaml:"detailed_metric,omitempty"`
	QuotaMode      bool             `yaml:"quota_mode,omitempty"`
	Metadata       map[string]any   `yaml:"metadata,omitempty"`
	Descriptors    []yamlDescriptor `yaml:"descriptors,omitempty"`
}

type yamlRateLimit struct {
	Unit            string        `yaml:"unit,omitempty"`
	RequestsPerUnit *uint32       `yaml:"requests_per_unit,omitempty"`
	Unlimited       bool          `yaml:"unlimited,omitempty"`
	Name            string        `yaml:"name,omitempty"`
	Replaces        []yamlReplace `yaml:"replaces,omitempty"`
}

type yamlReplace struct {
	Name string `yaml:"name"`
}

// Render turns the resources of one DiscoveryResponse into documents by name
// ("xds:NAME"). It fails, naming the resource, on a resource of another type, one that
// does not decode, two resources of one name, and fields this build does not know (a
// newer RateLimitConfig: ignoring them would change the limits silently).
func Render(resources []*anypb.Any) (map[string][]byte, error) {
	docs := make(map[string][]byte, len(resources))
	var errs []error
	for i, res := range resources {
		if res.GetTypeUrl() != TypeURL {
			errs = append(errs, fmt.Errorf("resource %d: type %q, want %s", i, res.GetTypeUrl(), TypeURL))
			continue
		}
		var rc rlsconf.RateLimitConfig
		if err := anypb.UnmarshalTo(res, &rc, proto.UnmarshalOptions{}); err != nil {
			errs = append(errs, fmt.Errorf("resource %d: %v", i, err))
			continue
		}
		name := rc.GetName()
		if name == "" {
			name = fmt.Sprintf("#%d", i)
		}
		doc := DocPrefix + name
		if _, dup := docs[doc]; dup {
			errs = append(errs, fmt.Errorf("%s: two resources have this name", doc))
			continue
		}
		if unknown := unknownFields(rc.ProtoReflect(), ""); len(unknown) > 0 {
			errs = append(errs, fmt.Errorf("%s: fields this halt does not know (a newer RateLimitConfig?): %s", doc, strings.Join(unknown, ", ")))
			continue
		}
		b, err := yaml.Marshal(yamlRoot{Domain: rc.GetDomain(), Descriptors: descriptors(rc.GetDescriptors())})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", doc, err))
			continue
		}
		docs[doc] = b
	}
	return docs, errors.Join(errs...)
}

func descriptors(ds []*rlsconf.RateLimitDescriptor) []yamlDescriptor {
	out := make([]yamlDescriptor, 0, len(ds))
	for _, d := range ds {
		out = append(out, yamlDescriptor{
			Key:            d.GetKey(),
			Value:          d.GetValue(),
			RateLimit:      rateLimit(d.GetRateLimit()),
			ShadowMode:     d.GetShadowMode(),
			DetailedMetric: d.GetDetailedMetric(),
			QuotaMode:      d.GetQuotaMode(),
			// A Struct's fields are JSON values: config validates them as it does a file's.
			Metadata:    d.GetMetadata().AsMap(),
			Descriptors: descriptors(d.GetDescriptors()),
		})
	}
	return out
}

func rateLimit(p *rlsconf.RateLimitPolicy) *yamlRateLimit {
	if p == nil {
		return nil
	}
	y := &yamlRateLimit{Unlimited: p.GetUnlimited(), Name: p.GetName()}
	// Proto3 cannot tell an unset unit or count from UNKNOWN and 0: leave them out of an
	// unlimited policy (where they must not be), keep them in any other (where UNKNOWN is
	// reported as an invalid unit, as the reference does).
	if !p.GetUnlimited() || p.GetUnit() != rlsconf.RateLimitUnit_UNKNOWN {
		y.Unit = strings.ToLower(p.GetUnit().String())
	}
	if !p.GetUnlimited() || p.GetRequestsPerUnit() != 0 {
		n := p.GetRequestsPerUnit()
		y.RequestsPerUnit = &n
	}
	for _, r := range p.GetReplaces() {
		y.Replaces = append(y.Replaces, yamlReplace{Name: r.GetName()})
	}
	return y
}

// unknownFields lists the unknown fields of m and of every message under it, by path
// ("descriptors[0].rate_limit: field 7").
func unknownFields(m protoreflect.Message, path string) []string {
	var out []string
	if b := m.GetUnknown(); len(b) > 0 {
		at := path
		if at == "" {
			at = "RateLimitConfig"
		}
		for len(b) > 0 {
			num, typ, n := protowire.ConsumeTag(b)
			if n < 0 {
				out = append(out, at+": unreadable unknown bytes")
				break
			}
			b = b[n:]
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				out = append(out, at+": unreadable unknown bytes")
				break
			}
			b = b[n:]
			out = append(out, fmt.Sprintf("%s: field %d", at, num))
		}
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		name := string(fd.Name())
		if path != "" {
			name = path + "." + name
		}
		switch {
		case fd.IsMap():
			// A map's values (a metadata Struct's fields): only message values can hold
			// unknown fields.
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				out = append(out, unknownFields(mv.Message(), fmt.Sprintf("%s[%q]", name, k.String()))...)
				return true
			})
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				out = append(out, unknownFields(l.Get(i).Message(), fmt.Sprintf("%s[%d]", name, i))...)
			}
		default:
			out = append(out, unknownFields(v.Message(), name)...)
		}
		return true
	})
	return out
}

// checkSizes refuses a push whose resources are above MaxResourceBytes one by one or
// MaxTotalBytes together, naming each resource (its name read from the encoded bytes,
// nothing decoded) and the cap.
func (c *Client) checkSizes(resources []*anypb.Any) error {
	var errs []error
	var total int64
	for i, res := range resources {
		n := int64(len(res.GetValue()))
		total += n
		if max := c.cfg.MaxResourceBytes; max > 0 && n > max {
			errs = append(errs, fmt.Errorf("%s%s: resource is %d bytes, more than the cap of %d bytes on one configuration document (raise it with %s)",
				DocPrefix, resourceName(res.GetValue(), i), n, max, c.cfg.CapFlags[0]))
		}
	}
	if max := c.cfg.MaxTotalBytes; max > 0 && total > max && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("the %d resources of the push are %d bytes together, more than the cap of %d bytes on the configuration (raise it with %s)",
			len(resources), total, max, c.cfg.CapFlags[1]))
	}
	return errors.Join(errs...)
}

// resourceName reads a RateLimitConfig's name (field 1) from its encoding without
// decoding the rest, for naming a resource refused unread; "#i" when it has none.
func resourceName(b []byte, i int) string {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				break
			}
			if len(v) > 256 {
				v = v[:256]
			}
			return string(v)
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			break
		}
		b = b[m:]
	}
	return fmt.Sprintf("#%d", i)
}
