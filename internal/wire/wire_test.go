package wire

import (
	"bytes"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// corrupt marshals m and swaps each placeholder for bytes of the same length that are
// not UTF-8: what Envoy sends when a header value holds such bytes.
func corrupt(t testing.TB, m proto.Message, swaps map[string]string) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for from, to := range swaps {
		if len(from) != len(to) || !bytes.Contains(b, []byte(from)) {
			t.Fatalf("placeholder %q", from)
		}
		b = bytes.ReplaceAll(b, []byte(from), []byte(to))
	}
	return b
}

func TestRateLimitRequestAsBytes(t *testing.T) {
	req := &rlspb.RateLimitRequest{Domain: "DOMAIN", HitsAddend: 3, Descriptors: []*rlcommon.RateLimitDescriptor{{
		Entries:    []*rlcommon.RateLimitDescriptor_Entry{{Key: "KEY1", Value: "VALUE1"}, {Key: "user", Value: "ok"}},
		HitsAddend: wrapperspb.UInt64(7),
		Limit:      &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 9},
	}}}
	b := corrupt(t, req, map[string]string{"DOMAIN": "d\xff\xfe\x00z1", "KEY1": "k\xc3(1", "VALUE1": "\xe2\x82x\xf0\x9f\x98"})
	if err := proto.Unmarshal(b, new(rlspb.RateLimitRequest)); err == nil {
		t.Fatal("protobuf-go accepted invalid UTF-8: the codec is not needed any more?")
	}
	var seen []protoreflect.FullName
	c := New(func(n protoreflect.FullName) { seen = append(seen, n) })
	var got rlspb.RateLimitRequest
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &got); err != nil {
		t.Fatal(err)
	}
	want := proto.Clone(req).(*rlspb.RateLimitRequest)
	want.Domain = "d\xff\xfe\x00z1"
	want.Descriptors[0].Entries[0].Key = "k\xc3(1"
	want.Descriptors[0].Entries[0].Value = "\xe2\x82x\xf0\x9f\x98"
	// proto.Equal compares strings as Go strings: byte for byte.
	if !proto.Equal(&got, want) {
		t.Fatalf("decoded %v\nwant %v", &got, want)
	}
	if len(seen) != 1 || seen[0] != "envoy.service.ratelimit.v3.RateLimitRequest" {
		t.Fatalf("onInvalid saw %v", seen)
	}
	// A valid message goes through grpc-go's codec and is not reported.
	ok, _ := proto.Marshal(req)
	var v rlspb.RateLimitRequest
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(ok)}, &v); err != nil || !proto.Equal(&v, req) || len(seen) != 1 {
		t.Fatalf("valid message: %v %v, reported %d", &v, err, len(seen))
	}
	// A malformed one is still refused.
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b[:len(b)-3])}, &v); err == nil {
		t.Fatal("a truncated message was accepted")
	}
}

// TestCheckRequestAsBytes: ext_authz's request holds maps (headers) whose keys and
// values may hold any bytes too; a map key cannot be bytes in a proto type, so the
// bytes copy reads map entries as messages.
func TestCheckRequestAsBytes(t *testing.T) {
	st, _ := structpb.NewStruct(map[string]any{"FKEY": "FVAL"})
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: "/PATH1", Headers: map[string]string{"HKEY": "HVAL1", "x-api-key": "k"},
			HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "RKEY", RawValue: []byte{0xff}}}},
		}},
		MetadataContext: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"filter": st}},
	}}
	b := corrupt(t, req, map[string]string{"/PATH1": "/p\xff\xfe1a", "HKEY": "h\xc0k1", "HVAL1": "v\x80\x80\x80z", "FVAL": "f\xed\xa0\x80"})
	var got authv3.CheckRequest
	if err := New(nil).Lenient(b, &got); err != nil {
		t.Fatal(err)
	}
	h := got.GetAttributes().GetRequest().GetHttp()
	if h.GetPath() != "/p\xff\xfe1a" || h.GetHeaders()["h\xc0k1"] != "v\x80\x80\x80z" || h.GetHeaders()["x-api-key"] != "k" || h.GetMethod() != "GET" {
		t.Fatalf("http %v", h)
	}
	if hm := h.GetHeaderMap().GetHeaders(); len(hm) != 1 || hm[0].GetKey() != "RKEY" || !bytes.Equal(hm[0].GetRawValue(), []byte{0xff}) {
		t.Fatalf("header map %v", hm)
	}
	if v := got.GetAttributes().GetMetadataContext().GetFilterMetadata()["filter"].GetFields()["FKEY"].GetStringValue(); v != "f\xed\xa0\x80" {
		t.Fatalf("struct value %q", v)
	}
}

// FuzzLenient: whatever the bytes, decoding as bytes never panics, and where protobuf-go
// accepts a message, decoding it as bytes gives the same message (unknown fields aside:
// the two decoders keep a non-minimal tag of an unknown field differently, and halt
// reads no unknown field).
func FuzzLenient(f *testing.F) {
	seed, _ := proto.Marshal(&rlspb.RateLimitRequest{Domain: "d", Descriptors: []*rlcommon.RateLimitDescriptor{{
		Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "k", Value: "v"}}, HitsAddend: wrapperspb.UInt64(2)}}})
	f.Add(seed)
	f.Add(append(append([]byte{}, seed[:len(seed)-1]...), 0xff))
	f.Add([]byte{0x0a, 0x02, 0xff, 0xfe})
	c := New(nil)
	f.Fuzz(func(t *testing.T, b []byte) {
		var strict, lenient rlspb.RateLimitRequest
		strictErr := proto.Unmarshal(b, &strict)
		lenientErr := c.Lenient(b, &lenient)
		dropUnknown(strict.ProtoReflect())
		dropUnknown(lenient.ProtoReflect())
		if strictErr == nil && (lenientErr != nil || !proto.Equal(&strict, &lenient)) {
			t.Fatalf("valid message decoded differently as bytes: %v / %v (%v)", &strict, &lenient, lenientErr)
		}
	})
}

func dropUnknown(m protoreflect.Message) {
	m.SetUnknown(nil)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool { dropUnknown(mv.Message()); return true })
			}
		case fd.IsList():
			if fd.Message() != nil {
				for i := 0; i < v.List().Len(); i++ {
					dropUnknown(v.List().Get(i).Message())
				}
			}
		case fd.Message() != nil:
			dropUnknown(v.Message())
		}
		return true
	})
}

// BenchmarkUnmarshal compares decoding one Envoy-sized RateLimitRequest with grpc-go's
// codec and with this one (valid UTF-8: the common case), and this one's second decode
// of a request that holds invalid UTF-8.
func BenchmarkUnmarshal(b *testing.B) {
	req := &rlspb.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{
		{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "remote_address", Value: "203.0.113.7"}}},
		{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "path", Value: "/v1/items/AAAA"}, {Key: "method", Value: "GET"}}},
	}}
	valid, _ := proto.Marshal(req)
	invalid := corrupt(b, req, map[string]string{"AAAA": "\xff\xfe\xfd\xfc"})
	c := New(nil)
	for _, bc := range []struct {
		name  string
		codec interface {
			Unmarshal(mem.BufferSlice, any) error
		}
		data []byte
	}{{"grpc-go/valid", c.base, valid}, {"wire/valid", c, valid}, {"wire/invalid-utf8", c, invalid}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var m rlspb.RateLimitRequest
				if err := bc.codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(bc.data)}, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
