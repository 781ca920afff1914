// Package policies is sluice's declarative model: the one YAML file an
// operator writes (design.md section 4), how it is loaded, validated and
// reloaded, and — as the decision lands — how a request is evaluated against
// it.
//
// # Loading
//
// LoadFile reads the file, decodes it strictly (an unknown key is an error,
// with the keys that are allowed), applies defaults (defaults.go), resolves
// relative file paths against the config file's directory, and validates
// every rule (validate.go). Every problem is a FieldError that names the
// file, line, column and key path, and all problems of a file are reported
// together:
//
//	invalid config (2 problems):
//	  sluice.yaml:12:11: targets[1].port: port 15432 is already used by targets[0]
//	  sluice.yaml:30:22: policies[0].targets[1]: unknown target "orders-db"
//
// Secrets are never in the file: credentials name an environment variable
// (*_env) or a file (*_file), and SecretRef.Resolve reads the value when it
// is used. A key such as password: is refused with the form to use instead.
//
// # Reloading
//
// Watcher watches the file's directory (so an editor's or a ConfigMap's
// rename-into-place is seen), debounces, loads the new version and hands it
// to an apply function (the xDS server's Update, later also the decision
// engine). A file that fails to load, or that apply refuses, is logged with
// its reason and the running config stays.
//
// # Examples
//
// examples/ holds a config per feature, each of which must load (tested);
// examples/broken/ holds invalid configs whose "# want:" lines state the
// exact errors they produce (tested).
package policies
