// Package wire is halt-envoy's gRPC codec: grpc-go's protobuf codec, except that a
// request whose string fields hold bytes that are not UTF-8 is decoded as it is
// instead of refused.
//
// proto3 requires strings to be UTF-8, and protobuf-go refuses a message that breaks
// the rule, so grpc-go answered such a call INTERNAL before halt saw it. Envoy does not
// check (a header value may hold any byte but a few controls, and Envoy copies it into
// a descriptor or a CheckRequest as it is), and with its default failure_mode_deny:
// false, Envoy lets a call that halt answered with an error through unlimited: one byte
// 0xff in a header value was a way around every limit. Decoded as bytes, such a call is
// decided like any other (Go strings hold any bytes; store keys escape them, see
// engine.AppendIdentity), and the codec tells its caller, who counts it.
//
// protobuf-go has no option to skip the check, so the codec decodes such a message a
// second time, into a dynamic message of a copy of its type whose string fields are
// bytes (map entries become plain repeated messages, since a map key cannot be bytes),
// and copies the fields into the message grpc-go asked for. Only a message that failed
// the check pays for this; every other one is decoded by grpc-go's codec as before.
package wire

import (
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// Codec is a grpc encoding.CodecV2 for protobuf that accepts invalid UTF-8 in string
// fields. It is safe for concurrent use.
type Codec struct {
	base encoding.CodecV2
	// onInvalid is told the full name of every message decoded with invalid UTF-8.
	onInvalid func(message protoreflect.FullName)
	// lenient holds, per message type, its copy with bytes for strings, built on first
	// need: protoreflect.FullName -> *lenientType.
	lenient sync.Map
}

type lenientType struct {
	desc protoreflect.MessageDescriptor
	err  error
}

// New returns the codec. onInvalid (may be nil) is called once for every message that
// held invalid UTF-8, with the message's full name (envoy.service.ratelimit.v3.
// RateLimitRequest, ...): a bounded set, fit for a metric label.
func New(onInvalid func(message protoreflect.FullName)) *Codec {
	if onInvalid == nil {
		onInvalid = func(protoreflect.FullName) {}
	}
	return &Codec{base: encoding.GetCodecV2(grpcproto.Name), onInvalid: onInvalid}
}

// Name is "proto": the codec replaces grpc-go's for the protobuf content subtype.
func (c *Codec) Name() string { return grpcproto.Name }

// Marshal is grpc-go's: answers are built by halt and always valid.
func (c *Codec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

// Unmarshal decodes data into v as grpc-go does and, when that fails only because a
// string field is not UTF-8, decodes it again with the strings taken as bytes.
func (c *Codec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.base.Unmarshal(data, v)
	if err == nil || !invalidUTF8(err) {
		return err
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	if lerr := c.Lenient(buf.ReadOnlyData(), m); lerr != nil {
		return fmt.Errorf("%w (and as bytes: %v)", err, lerr)
	}
	c.onInvalid(m.ProtoReflect().Descriptor().FullName())
	return nil
}

// invalidUTF8 reports whether err is protobuf-go's refusal of a string that is not
// UTF-8 (its error type says so with an InvalidUTF8 method).
func invalidUTF8(err error) bool {
	var u interface{ InvalidUTF8() bool }
	return errors.As(err, &u) && u.InvalidUTF8()
}

// Lenient decodes b into m (reset first) with every string field, at any depth, taken
// as the bytes it holds, valid UTF-8 or not. It fails only where proto.Unmarshal would
// fail for another reason (a truncated or malformed message).
func (c *Codec) Lenient(b []byte, m proto.Message) error {
	lt := c.lenientFor(m.ProtoReflect().Descriptor())
	if lt.err != nil {
		return lt.err
	}
	dm := dynamicpb.NewMessage(lt.desc)
	if err := proto.Unmarshal(b, dm); err != nil {
		return err
	}
	proto.Reset(m)
	copyMessage(m.ProtoReflect(), dm)
	return nil
}

func (c *Codec) lenientFor(md protoreflect.MessageDescriptor) *lenientType {
	if lt, ok := c.lenient.Load(md.FullName()); ok {
		return lt.(*lenientType)
	}
	desc, err := bytesCopy(md)
	lt, _ := c.lenient.LoadOrStore(md.FullName(), &lenientType{desc: desc, err: err})
	return lt.(*lenientType)
}

// bytesCopy builds a copy of md's type in which every string field (of md and of every
// message its fields reach) is bytes and every map is a repeated entry message, on a
// registry of its own. Files md does not reach through fields (option definitions)
// resolve from the global registry unchanged.
func bytesCopy(md protoreflect.MessageDescriptor) (protoreflect.MessageDescriptor, error) {
	// The files holding a message reachable through fields, in dependency order.
	var order []protoreflect.FileDescriptor
	seenFile := map[string]bool{}
	seenMsg := map[protoreflect.FullName]bool{}
	var walk func(protoreflect.MessageDescriptor)
	addFile := func(f protoreflect.FileDescriptor) {
		if seenFile[f.Path()] {
			return
		}
		seenFile[f.Path()] = true
		order = append(order, f)
	}
	walk = func(m protoreflect.MessageDescriptor) {
		if seenMsg[m.FullName()] {
			return
		}
		seenMsg[m.FullName()] = true
		addFile(m.ParentFile())
		fs := m.Fields()
		for i := 0; i < fs.Len(); i++ {
			if sub := fs.Get(i).Message(); sub != nil {
				walk(sub)
			}
		}
	}
	walk(md)

	local := new(protoregistry.Files)
	resolver := chain{local, protoregistry.GlobalFiles}
	// Build every reached file once its reached imports are built.
	built := map[string]bool{}
	for len(built) < len(order) {
		progress := false
		for _, f := range order {
			if built[f.Path()] || !importsBuilt(f, seenFile, built) {
				continue
			}
			fdp := protodesc.ToFileDescriptorProto(f)
			for _, m := range fdp.MessageType {
				toBytes(m)
			}
			nf, err := protodesc.NewFile(fdp, resolver)
			if err != nil {
				return nil, fmt.Errorf("wire: %s as bytes: %w", f.Path(), err)
			}
			if err := local.RegisterFile(nf); err != nil {
				return nil, fmt.Errorf("wire: %s as bytes: %w", f.Path(), err)
			}
			built[f.Path()] = true
			progress = true
		}
		if !progress {
			return nil, fmt.Errorf("wire: import cycle among the files of %s", md.FullName())
		}
	}
	d, err := local.FindDescriptorByName(md.FullName())
	if err != nil {
		return nil, fmt.Errorf("wire: %s as bytes: %w", md.FullName(), err)
	}
	out, ok := d.(protoreflect.MessageDescriptor)
	if !ok {
		return nil, fmt.Errorf("wire: %s is not a message", md.FullName())
	}
	return out, nil
}

func importsBuilt(f protoreflect.FileDescriptor, reached, built map[string]bool) bool {
	imps := f.Imports()
	for i := 0; i < imps.Len(); i++ {
		if p := imps.Get(i).Path(); reached[p] && !built[p] {
			return false
		}
	}
	return true
}

// toBytes turns m's string fields into bytes and its map entries into plain messages,
// nested messages included.
func toBytes(m *descriptorpb.DescriptorProto) {
	for _, f := range m.Field {
		if f.GetType() == descriptorpb.FieldDescriptorProto_TYPE_STRING {
			f.Type = descriptorpb.FieldDescriptorProto_TYPE_BYTES.Enum()
			f.DefaultValue = nil // a string default is not a valid bytes default; decoding never reads it
		}
	}
	if m.GetOptions().GetMapEntry() {
		m.Options.MapEntry = proto.Bool(false)
	}
	for _, n := range m.NestedType {
		toBytes(n)
	}
}

// chain resolves files and descriptors from the first resolver that has them.
type chain []*protoregistry.Files

func (c chain) FindFileByPath(p string) (protoreflect.FileDescriptor, error) {
	for _, r := range c {
		if f, err := r.FindFileByPath(p); err == nil {
			return f, nil
		}
	}
	return nil, protoregistry.NotFound
}

func (c chain) FindDescriptorByName(n protoreflect.FullName) (protoreflect.Descriptor, error) {
	for _, r := range c {
		if d, err := r.FindDescriptorByName(n); err == nil {
			return d, nil
		}
	}
	return nil, protoregistry.NotFound
}

// copyMessage copies src (of the bytes copy of dst's type) into dst, field by number:
// bytes become strings where dst has strings, entry lists become maps.
func copyMessage(dst, src protoreflect.Message) {
	fields := dst.Descriptor().Fields()
	src.Range(func(sfd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		dfd := fields.ByNumber(sfd.Number())
		if dfd == nil {
			return true
		}
		switch {
		case dfd.IsMap():
			mp := dst.Mutable(dfd).Map()
			entries := v.List()
			for i := 0; i < entries.Len(); i++ {
				e := entries.Get(i).Message()
				ef := e.Descriptor().Fields()
				key := scalar(dfd.MapKey(), e.Get(ef.ByNumber(1)))
				var val protoreflect.Value
				if dfd.MapValue().Message() != nil {
					val = mp.NewValue()
					copyMessage(val.Message(), e.Get(ef.ByNumber(2)).Message())
				} else {
					val = scalar(dfd.MapValue(), e.Get(ef.ByNumber(2)))
				}
				mp.Set(key.MapKey(), val)
			}
		case dfd.IsList():
			lst := dst.Mutable(dfd).List()
			in := v.List()
			for i := 0; i < in.Len(); i++ {
				if dfd.Message() != nil {
					el := lst.NewElement()
					copyMessage(el.Message(), in.Get(i).Message())
					lst.Append(el)
				} else {
					lst.Append(scalar(dfd, in.Get(i)))
				}
			}
		case dfd.Message() != nil:
			copyMessage(dst.Mutable(dfd).Message(), v.Message())
		default:
			dst.Set(dfd, scalar(dfd, v))
		}
		return true
	})
	if u := src.GetUnknown(); len(u) > 0 {
		dst.SetUnknown(u)
	}
}

// scalar converts one value of the bytes copy to the kind dst has.
func scalar(dst protoreflect.FieldDescriptor, v protoreflect.Value) protoreflect.Value {
	if dst.Kind() == protoreflect.StringKind {
		return protoreflect.ValueOfString(string(v.Bytes()))
	}
	return v
}
