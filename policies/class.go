package policies

import (
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// OperationClass is what a statement or request does (design.md section 5).
// Classes are ordered by danger: a statement's class is the most dangerous
// class found anywhere in it.
type OperationClass int

// Operation classes, least to most dangerous.
const (
	ClassRead OperationClass = iota + 1
	ClassWrite
	ClassDDL
	ClassAdmin
	// ClassUnknown is what sluice cannot understand (an unparseable
	// statement); it is treated as the most restricted class.
	ClassUnknown
)

var classNames = map[OperationClass]string{
	ClassRead:    "read",
	ClassWrite:   "write",
	ClassDDL:     "ddl",
	ClassAdmin:   "admin",
	ClassUnknown: "unknown",
}

// AllClasses lists every class, least dangerous first.
var AllClasses = []OperationClass{ClassRead, ClassWrite, ClassDDL, ClassAdmin, ClassUnknown}

// String returns the class's name as written in config.
func (c OperationClass) String() string {
	if n, ok := classNames[c]; ok {
		return n
	}
	return fmt.Sprintf("OperationClass(%d)", int(c))
}

// ParseClass parses a class name as written in config.
func ParseClass(s string) (OperationClass, error) {
	for c, n := range classNames {
		if strings.EqualFold(s, n) {
			return c, nil
		}
	}
	return 0, fmt.Errorf("unknown operation class %q (expected one of read, write, ddl, admin, unknown)", s)
}

// UnmarshalYAML reads a class name.
func (c *OperationClass) UnmarshalYAML(n *yaml.Node) error {
	// A *yaml.TypeError with "line N:C:" lets the loader locate the error
	// and keep decoding, like yaml.v3's own type errors.
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d:%d: expected an operation class name (read, write, ddl, admin, unknown)", n.Line, n.Column)}}
	}
	v, err := ParseClass(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d:%d: %v", n.Line, n.Column, err)}}
	}
	*c = v
	return nil
}

// MarshalYAML writes the class name.
func (c OperationClass) MarshalYAML() (any, error) { return c.String(), nil }
