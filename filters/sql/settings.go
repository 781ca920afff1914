package sql

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/sluicehq/sluice/policies"
)

// harmlessSettings are the settings an agent may SET, RESET or set_config
// with a read: each changes only how this session formats values, reports,
// or times out. Every other setting is admin, notably:
//
//   - role, session_authorization: change the privileges of the session;
//   - search_path: redirects unqualified names, so a relation or function
//     sluice classified may not be the one that runs;
//   - standard_conforming_strings, backslash_quote, client_encoding: change
//     how the server reads string literals or bytes, so the statement the
//     server runs could differ from the one sluice parsed (pg_query parses
//     with standard_conforming_strings on, in UTF-8);
//   - custom settings (app.tenant_id): row-level security policies often
//     read them, so setting one can switch tenant;
//   - resource settings (work_mem, temp_file_limit): the operator's.
var harmlessSettings = map[string]bool{
	"application_name":                    true,
	"statement_timeout":                   true,
	"lock_timeout":                        true,
	"idle_in_transaction_session_timeout": true,
	"idle_session_timeout":                true,
	"transaction_timeout":                 true, // 17
	"client_min_messages":                 true,
	"datestyle":                           true,
	"intervalstyle":                       true,
	"timezone":                            true, // also SET TIME ZONE
	"extra_float_digits":                  true,
	"lc_monetary":                         true,
	"lc_numeric":                          true,
	"lc_time":                             true,
	// Transaction characteristics: isolation, read-only, deferrable.
	"transaction_isolation":          true,
	"transaction_read_only":          true,
	"transaction_deferrable":         true,
	"default_transaction_isolation":  true,
	"default_transaction_read_only":  true,
	"default_transaction_deferrable": true,
	// SET TRANSACTION ..., SET SESSION CHARACTERISTICS AS TRANSACTION ...
	// and SET TRANSACTION SNAPSHOT are parsed as these pseudo-names.
	"transaction":             true,
	"session characteristics": true,
	"transaction snapshot":    true,
}

// settingClass classifies changing the setting name. Setting names are
// case-insensitive in Postgres.
func settingClass(name string) policies.OperationClass {
	if harmlessSettings[strings.ToLower(name)] {
		return policies.ClassRead
	}
	return policies.ClassAdmin
}

// setClass classifies SET and RESET.
func setClass(s *pg_query.VariableSetStmt) policies.OperationClass {
	if s.GetKind() == pg_query.VariableSetKind_VAR_RESET_ALL {
		// RESET ALL also resets role and session_authorization.
		return policies.ClassAdmin
	}
	return settingClass(s.GetName())
}

// setConfigClass classifies set_config(name, value, is_local): the class
// of its setting when the name is a string constant, admin otherwise.
func setConfigClass(fc *pg_query.FuncCall) policies.OperationClass {
	args := fc.GetArgs()
	if len(args) == 0 {
		return policies.ClassAdmin
	}
	c := args[0].GetAConst()
	if c == nil || c.GetSval() == nil {
		return policies.ClassAdmin
	}
	return settingClass(c.GetSval().GetSval())
}
