package bootstrap

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// allValidator is what protoc-gen-validate generates for every Envoy message.
type allValidator interface{ ValidateAll() error }

// Validate runs the PGV rules on m and on every message packed in a
// google.protobuf.Any anywhere inside it. PGV's own ValidateAll stops at an
// Any (envoy-contract.md section 7), so without the walk a typed config
// Envoy would reject passes here. An Any whose type is not linked into this
// binary is an error too: Envoy would not know it either.
func Validate(m proto.Message) error {
	var errs []error
	walk(m.ProtoReflect(), string(m.ProtoReflect().Descriptor().FullName()), &errs)
	return errors.Join(errs...)
}

func walk(m protoreflect.Message, path string, errs *[]error) {
	if v, ok := m.Interface().(allValidator); ok {
		if err := v.ValidateAll(); err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %s: %w", path, a.GetTypeUrl(), err))
			return
		}
		walk(inner.ProtoReflect(), path+"("+a.GetTypeUrl()+")", errs)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil {
			return true
		}
		name := path + "." + string(fd.Name())
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walk(l.Get(i).Message(), fmt.Sprintf("%s[%d]", name, i), errs)
			}
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				walk(mv.Message(), fmt.Sprintf("%s[%s]", name, k.String()), errs)
				return true
			})
		default:
			walk(v.Message(), name, errs)
		}
		return true
	})
}
