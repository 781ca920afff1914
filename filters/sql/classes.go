package sql

import (
	"strings"

	"github.com/sluicehq/sluice/policies"
)

// Classes is a set of operation classes: every class found in a statement's
// parse tree. The decision uses Max; the set is kept for audit and for
// policies that name several classes.
type Classes uint8

// ClassesOf returns the set holding cs.
func ClassesOf(cs ...policies.OperationClass) Classes {
	var s Classes
	for _, c := range cs {
		s = s.With(c)
	}
	return s
}

// With returns s with c added.
func (s Classes) With(c policies.OperationClass) Classes {
	if c < policies.ClassRead || c > policies.ClassUnknown {
		// An out-of-range class is a programming error; fail closed.
		c = policies.ClassUnknown
	}
	return s | 1<<uint(c)
}

// Union returns every class in s or t.
func (s Classes) Union(t Classes) Classes { return s | t }

// Has reports whether c is in s.
func (s Classes) Has(c policies.OperationClass) bool { return s&(1<<uint(c)) != 0 }

// Max returns the most dangerous class in s, or read when s is empty (a
// statement that does nothing reads nothing).
func (s Classes) Max() policies.OperationClass {
	for i := len(policies.AllClasses) - 1; i >= 0; i-- {
		if c := policies.AllClasses[i]; s.Has(c) {
			return c
		}
	}
	return policies.ClassRead
}

// List returns the classes in s, least dangerous first.
func (s Classes) List() []policies.OperationClass {
	var out []policies.OperationClass
	for _, c := range policies.AllClasses {
		if s.Has(c) {
			out = append(out, c)
		}
	}
	return out
}

// String prints the set as "{read,ddl}".
func (s Classes) String() string {
	var b strings.Builder
	b.WriteByte('{')
	for i, c := range s.List() {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(c.String())
	}
	b.WriteByte('}')
	return b.String()
}
