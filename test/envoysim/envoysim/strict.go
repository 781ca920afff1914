package envoysim

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// Strict acceptance (issue item 2, contract §7): the sim NACKs what it cannot
// play faithfully instead of silently doing something else. Three checks:
//
//   - every Any is unpacked (an unknown type is rejected) and ValidateAll()'d,
//     because PGV does not descend into Any;
//   - every populated field of a message must be one the sim implements, or one
//     listed as not changing behaviour;
//   - the C++-only checks of contract §7 are replicated where each filter's
//     config is built.

// unsupportedFieldsError names the populated fields the sim does not implement.
type unsupportedFieldsError struct {
	msg    protoreflect.FullName
	fields []string
}

func (e *unsupportedFieldsError) Error() string {
	return fmt.Sprintf("%s: field(s) %s not implemented by envoysim", e.msg, strings.Join(e.fields, ", "))
}

// checkFields fails when m has a populated field outside allowed, or unknown
// fields (a newer proto than the sim's).
func checkFields(m proto.Message, allowed ...string) error {
	if m == nil {
		return nil
	}
	r := m.ProtoReflect()
	if !r.IsValid() {
		return nil
	}
	var bad []string
	r.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(allowed, string(fd.Name())) {
			bad = append(bad, string(fd.Name()))
		}
		return true
	})
	if len(r.GetUnknown()) > 0 {
		bad = append(bad, "<unknown fields>")
	}
	if len(bad) > 0 {
		return &unsupportedFieldsError{msg: r.Descriptor().FullName(), fields: bad}
	}
	return nil
}

type validatorAll interface{ ValidateAll() error }

// validate runs the message's PGV rules (Envoy's first-line checks).
func validate(m proto.Message) error {
	if v, ok := m.(validatorAll); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("Proto constraint validation failed (%v)", err)
		}
	}
	return nil
}

// unpackTyped unpacks a typed_config and validates it. name is the filter or
// extension name, used in Envoy's wording of the error.
func unpackTyped(name string, a *anypb.Any) (proto.Message, error) {
	if a == nil {
		return nil, fmt.Errorf("%s: typed_config is required", name)
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil, fmt.Errorf("Didn't find a registered implementation for '%s' with type URL: '%s'", name, typeName(a))
	}
	if err := validate(m); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return m, nil
}

func typeName(a *anypb.Any) string {
	u := a.GetTypeUrl()
	if i := strings.LastIndexByte(u, '/'); i >= 0 {
		return u[i+1:]
	}
	return u
}
