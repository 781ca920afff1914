package policies

import (
	"reflect"
	"strings"
)

// structKeys maps each config struct's Go name to its YAML keys, derived
// once from the struct tags so that error messages never drift from the
// model.
var structKeys = func() map[string][]string {
	out := map[string][]string{}
	var visit func(t reflect.Type)
	visit = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || t.PkgPath() != reflect.TypeOf(Config{}).PkgPath() {
			return
		}
		if _, done := out[t.Name()]; done {
			return
		}
		out[t.Name()] = nil
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if tag == "-" || tag == "" {
				continue
			}
			out[t.Name()] = append(out[t.Name()], tag)
			visit(f.Type)
		}
	}
	visit(reflect.TypeOf(Config{}))
	return out
}()
