package policies

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxConfigBytes bounds the size of a config file; a larger one is refused
// rather than read into memory.
const MaxConfigBytes = 8 << 20

// LoadFile reads, decodes, defaults and validates the config at path.
// Every problem is reported with its file, line, column and key.
func LoadFile(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > MaxConfigBytes {
		return nil, &ValidationError{Errs: []*FieldError{{File: path, Msg: fmt.Sprintf("file is larger than %d bytes", MaxConfigBytes)}}}
	}
	return Load(path, data)
}

// Load decodes, defaults and validates config bytes; name is used in errors
// and recorded as Config.Source.
func Load(name string, data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &ValidationError{Errs: []*FieldError{syntaxError(name, err)}}
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, &ValidationError{Errs: []*FieldError{{File: name, Line: 1, Msg: "file is empty: expected a mapping with at least targets and policies"}}}
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return nil, &ValidationError{Errs: []*FieldError{{File: name, Line: doc.Line, Column: doc.Column, Msg: "expected a mapping at the top level"}}}
	}
	idx := indexNodes(doc)

	v := &validator{file: name, idx: idx}
	v.rejectInlineSecrets()

	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		v.decodeError(err)
	}
	if len(v.errs) > 0 {
		return nil, v.result()
	}
	cfg.Source = name
	cfg.Digest = fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	resolvePaths(&cfg, filepath.Dir(name))
	applyDefaults(&cfg)
	v.validate(&cfg)
	if err := v.result(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// nodeIndex maps a key path ("targets[0].port") to its value node and its
// key node, and a line to the innermost path that starts there.
type nodeIndex struct {
	value  map[string]*yaml.Node
	key    map[string]*yaml.Node
	byLine map[int]string
	byPos  map[[2]int]string
}

func indexNodes(doc *yaml.Node) *nodeIndex {
	idx := &nodeIndex{value: map[string]*yaml.Node{}, key: map[string]*yaml.Node{}, byLine: map[int]string{}, byPos: map[[2]int]string{}}
	var walk func(path string, n *yaml.Node)
	walk = func(path string, n *yaml.Node) {
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		idx.value[path] = n
		idx.byPos[[2]int{n.Line, n.Column}] = path
		if _, ok := idx.byLine[n.Line]; !ok || len(path) > len(idx.byLine[n.Line]) {
			idx.byLine[n.Line] = path
		}
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, val := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				idx.key[p] = k
				if _, ok := idx.byLine[k.Line]; !ok || len(p) > len(idx.byLine[k.Line]) {
					idx.byLine[k.Line] = p
				}
				walk(p, val)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(fmt.Sprintf("%s[%d]", path, i), c)
			}
		}
	}
	walk("", doc)
	return idx
}

// yamlLineRe matches yaml.v3's "line N: msg", and "line N:C: msg" as
// written by this package's own UnmarshalYAML methods.
var yamlLineRe = regexp.MustCompile(`^(?:yaml: )?line (\d+)(?::(\d+))?: (.*)$`)

func syntaxError(file string, err error) *FieldError {
	msg := err.Error()
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &FieldError{File: file, Line: line, Msg: "YAML syntax: " + m[3]}
	}
	return &FieldError{File: file, Msg: "YAML syntax: " + strings.TrimPrefix(msg, "yaml: ")}
}

var (
	unknownFieldRe  = regexp.MustCompile(`^field (\S+) not found in type policies\.(\w+)$`)
	cannotUnmarshal = regexp.MustCompile("^cannot unmarshal !!(\\w+) `(.*)` into (.+)$")
)

// decodeError turns yaml.v3's decode errors into located FieldErrors with
// a key path and what was expected.
func (v *validator) decodeError(err error) {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		v.errs = append(v.errs, syntaxError(v.file, err))
		return
	}
	for _, s := range te.Errors {
		m := yamlLineRe.FindStringSubmatch(s)
		if m == nil {
			v.errs = append(v.errs, &FieldError{File: v.file, Msg: s})
			continue
		}
		line, _ := strconv.Atoi(m[1])
		col, _ := strconv.Atoi(m[2])
		msg := m[3]
		key := v.idx.byLine[line]
		if p, ok := v.idx.byPos[[2]int{line, col}]; ok {
			key = p
		}
		if fm := unknownFieldRe.FindStringSubmatch(msg); fm != nil {
			msg = fmt.Sprintf("unknown key %q (expected one of: %s)", fm[1], strings.Join(knownKeys(fm[2]), ", "))
			if k := v.idx.key[key]; k != nil {
				col = k.Column
			}
		} else if cm := cannotUnmarshal.FindStringSubmatch(msg); cm != nil {
			msg = fmt.Sprintf("expected %s, got %s %q", describeGoType(cm[3]), cm[1], cm[2])
			if n := v.idx.value[key]; n != nil {
				col = n.Column
			}
		}
		if v.reported(line, key) {
			continue // already explained, e.g. an inline secret
		}
		v.errs = append(v.errs, &FieldError{File: v.file, Line: line, Column: col, Key: key, Msg: msg})
	}
	sortErrs(v.errs)
}

func (v *validator) reported(line int, key string) bool {
	for _, e := range v.errs {
		if e.Line == line && e.Key == key {
			return true
		}
	}
	return false
}

func describeGoType(t string) string {
	switch {
	case t == "time.Duration":
		return "a duration such as 30s, 5m or 2160h"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case t == "int" || t == "int64":
		return "an integer"
	case t == "bool":
		return "true or false"
	case t == "string" || t == "policies.TargetKind":
		return "a string"
	case strings.HasPrefix(t, "policies."), strings.HasPrefix(t, "*policies."):
		return "a mapping"
	}
	return t
}

// knownKeys lists the YAML keys of a config struct by its Go type name, for
// "unknown key" messages.
func knownKeys(typeName string) []string {
	var keys []string
	for _, k := range structKeys[typeName] {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
