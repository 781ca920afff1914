package sql

import (
	_ "embed"
	"strings"

	"github.com/sluicehq/sluice/policies"
)

// Function classification data. A call is classified by, in order: the
// operator's WithFunctions, knownFunctions, knownPrefixes, pureBuiltins,
// and otherwise unknownFunction (write, opaque). Entries more dangerous
// than read match the name in any schema; read entries match only
// unqualified or pg_catalog-qualified calls.

var (
	read  = FunctionInfo{Class: policies.ClassRead}
	write = FunctionInfo{Class: policies.ClassWrite}
	admin = FunctionInfo{Class: policies.ClassAdmin}
	// readOpaque reads data by name (a table, a cursor): read, but its
	// result's lineage is unknown, so masking cannot be bypassed through it.
	readOpaque = FunctionInfo{Class: policies.ClassRead, Opaque: true}
	// adminOpaque is admin and returns data from outside the query.
	adminOpaque = FunctionInfo{Class: policies.ClassAdmin, Opaque: true}
)

// knownFunctions classifies every volatile pg_catalog function (PostgreSQL
// 15) and the extension functions sluice knows to be dangerous. set_config
// is listed here as admin and refined by the walker when its setting name
// is a constant (settings.go).
var knownFunctions = map[string]FunctionInfo{
	// Other sessions and the server process.
	"pg_terminate_backend":                   admin, // ends another session
	"pg_cancel_backend":                      admin, // cancels another session's query
	"pg_reload_conf":                         admin, // reloads the server configuration
	"pg_rotate_logfile":                      admin, // rotates the server log
	"pg_rotate_logfile_old":                  admin, // same, adminpack's old name
	"pg_log_backend_memory_contexts":         admin, // makes a backend write to the server log
	"pg_promote":                             admin, // promotes a standby
	"pg_wal_replay_pause":                    admin, // pauses recovery
	"pg_wal_replay_resume":                   admin, // resumes recovery
	"pg_switch_wal":                          admin, // forces a WAL segment switch
	"pg_create_restore_point":                admin, // writes a named restore point
	"pg_backup_start":                        admin, // starts an online backup
	"pg_backup_stop":                         admin, // ends an online backup
	"pg_start_backup":                        admin, // pre-15 name of pg_backup_start
	"pg_stop_backup":                         admin, // pre-15 name of pg_backup_stop
	"set_config":                             admin, // changes a setting; refined in settings.go
	"pg_stat_reset":                          admin, // discards the database's statistics
	"pg_stat_reset_shared":                   admin, // discards cluster-wide statistics
	"pg_stat_reset_single_table_counters":    admin, // discards a table's statistics
	"pg_stat_reset_single_function_counters": admin, // discards a function's statistics
	"pg_stat_reset_slru":                     admin, // discards SLRU statistics
	"pg_stat_reset_replication_slot":         admin, // discards slot statistics
	"pg_stat_reset_subscription_stats":       admin, // discards subscription statistics
	"pg_stat_statements_reset":               admin, // pg_stat_statements: discards query statistics

	// Replication: slots and logical decoding stream every change in the
	// database past any table policy.
	"pg_create_physical_replication_slot":    admin,       // retains WAL until dropped
	"pg_create_logical_replication_slot":     admin,       // retains WAL and catalog rows
	"pg_drop_replication_slot":               admin,       // breaks a replica's stream
	"pg_copy_physical_replication_slot":      admin,       // creates a slot
	"pg_copy_logical_replication_slot":       admin,       // creates a slot
	"pg_replication_slot_advance":            admin,       // discards changes a consumer needs
	"pg_sync_replication_slots":              admin,       // 17: syncs failover slots
	"pg_logical_slot_get_changes":            adminOpaque, // consumes decoded changes
	"pg_logical_slot_get_binary_changes":     adminOpaque, // consumes decoded changes
	"pg_logical_slot_peek_changes":           adminOpaque, // reads decoded changes of every table
	"pg_logical_slot_peek_binary_changes":    adminOpaque, // reads decoded changes of every table
	"pg_logical_emit_message":                admin,       // writes a message into the WAL
	"pg_replication_origin_create":           admin,       // creates a replication origin
	"pg_replication_origin_drop":             admin,       // drops a replication origin
	"pg_replication_origin_advance":          admin,       // moves an origin's position
	"pg_replication_origin_session_setup":    admin,       // marks the session as replaying
	"pg_replication_origin_session_reset":    admin,       // undoes session_setup
	"pg_replication_origin_xact_setup":       admin,       // marks the transaction as replayed
	"pg_replication_origin_xact_reset":       admin,       // undoes xact_setup
	"pg_replication_origin_session_is_setup": read,        // reports session state
	"pg_replication_origin_session_progress": read,        // reports a position
	"pg_replication_origin_progress":         read,        // reports a position
	"pg_show_replication_origin_status":      read,        // lists origins

	// Server-side files: outside any table, so outside masking and policy.
	"pg_read_file":              adminOpaque, // reads a server file
	"pg_read_file_old":          adminOpaque, // same, old signature
	"pg_read_binary_file":       adminOpaque, // reads a server file
	"pg_stat_file":              admin,       // reveals a server file's metadata
	"pg_ls_dir":                 admin,       // lists a server directory
	"pg_ls_logdir":              admin,       // lists the log directory
	"pg_ls_waldir":              admin,       // lists the WAL directory
	"pg_ls_tmpdir":              admin,       // lists temporary files
	"pg_ls_archive_statusdir":   admin,       // lists WAL archive status
	"pg_ls_logicalmapdir":       admin,       // lists logical mapping files
	"pg_ls_logicalsnapdir":      admin,       // lists logical snapshots
	"pg_ls_replslotdir":         admin,       // lists a slot's directory
	"pg_hba_file_rules":         admin,       // reveals pg_hba.conf
	"pg_ident_file_mappings":    admin,       // reveals pg_ident.conf
	"pg_show_all_file_settings": admin,       // reveals postgresql.conf
	"pg_current_logfile":        admin,       // reveals the log file's path
	"pg_file_write":             admin,       // adminpack: writes a server file
	"pg_file_rename":            admin,       // adminpack: renames a server file
	"pg_file_unlink":            admin,       // adminpack: deletes a server file
	"pg_file_sync":              admin,       // adminpack: fsyncs a server file
	"pg_logdir_ls":              admin,       // adminpack: lists the log directory

	// Large objects live outside tables, so table policy and masking do not
	// see them; lo_import and lo_export also read and write server files.
	"lo_import":     admin,
	"lo_export":     admin,
	"lo_creat":      admin,
	"lo_create":     admin,
	"lo_open":       admin,
	"lo_close":      admin,
	"lo_get":        adminOpaque,
	"loread":        adminOpaque,
	"lo_put":        admin,
	"lowrite":       admin,
	"lo_from_bytea": admin,
	"lo_unlink":     admin,
	"lo_truncate":   admin,
	"lo_truncate64": admin,
	"lo_lseek":      admin,
	"lo_lseek64":    admin,
	"lo_tell":       admin,
	"lo_tell64":     admin,
	"lo_manage":     admin, // lo extension trigger function

	// SQL in a string runs unseen, like a DO block.
	"query_to_xml":               adminOpaque, // runs a query given as text
	"query_to_xml_and_xmlschema": adminOpaque, // runs a query given as text
	"query_to_xmlschema":         admin,       // plans a query given as text
	"ts_stat":                    adminOpaque, // runs a query given as text
	"ts_rewrite":                 admin,       // one overload runs a query given as text

	// Whole tables, schemas or databases by name: a read, but lineage is
	// unknown (a masked column would come back unmasked).
	"table_to_xml":                  readOpaque,
	"table_to_xml_and_xmlschema":    readOpaque,
	"schema_to_xml":                 readOpaque,
	"schema_to_xml_and_xmlschema":   readOpaque,
	"database_to_xml":               readOpaque,
	"database_to_xml_and_xmlschema": readOpaque,
	"cursor_to_xml":                 readOpaque, // rows of an open cursor
	"cursor_to_xmlschema":           read,

	// Index and catalog maintenance, like VACUUM and REINDEX.
	"brin_summarize_new_values":     admin,
	"brin_summarize_range":          admin,
	"brin_desummarize_range":        admin,
	"gin_clean_pending_list":        admin,
	"pg_import_system_collations":   admin, // creates collations
	"pg_nextoid":                    admin, // superuser catalog surgery
	"pg_stop_making_pinned_objects": admin, // initdb only
	"pg_extension_config_dump":      admin, // changes an extension's dump config

	// Writes: sequences, notifications and locks other sessions see.
	"nextval":                          write, // advances a sequence
	"setval":                           write, // sets a sequence
	"pg_notify":                        write, // like NOTIFY
	"pg_advisory_lock":                 write, // session lock; may block the application
	"pg_advisory_lock_shared":          write,
	"pg_advisory_unlock":               write,
	"pg_advisory_unlock_shared":        write,
	"pg_advisory_unlock_all":           write,
	"pg_advisory_xact_lock":            write,
	"pg_advisory_xact_lock_shared":     write,
	"pg_try_advisory_lock":             write,
	"pg_try_advisory_lock_shared":      write,
	"pg_try_advisory_xact_lock":        write,
	"pg_try_advisory_xact_lock_shared": write,

	// Volatile but without side effects.
	"clock_timestamp":                      read,
	"timeofday":                            read,
	"random":                               read,
	"random_normal":                        read, // 16
	"setseed":                              read, // seeds this session's random()
	"gen_random_uuid":                      read,
	"pg_sleep":                             read, // bounded by statement_timeout like any slow query
	"pg_sleep_for":                         read,
	"pg_sleep_until":                       read,
	"currval":                              read,
	"lastval":                              read,
	"pg_sequence_last_value":               read,
	"current_query":                        read, // this session's own query
	"txid_current":                         read, // assigns an xid, changes no data
	"txid_current_if_assigned":             read,
	"pg_current_xact_id":                   read,
	"pg_current_xact_id_if_assigned":       read,
	"txid_status":                          read,
	"pg_xact_status":                       read,
	"pg_xact_commit_timestamp":             read,
	"pg_xact_commit_timestamp_origin":      read,
	"pg_last_committed_xact":               read,
	"pg_export_snapshot":                   read,
	"pg_stat_clear_snapshot":               read,
	"pg_stat_force_next_flush":             read,
	"pg_stat_have_stats":                   read,
	"pg_blocking_pids":                     read,
	"pg_safe_snapshot_blocking_pids":       read,
	"pg_isolation_test_session_is_blocked": read,
	"pg_lock_status":                       read,
	"pg_prepared_xact":                     read,
	"pg_get_multixact_members":             read,
	"pg_get_backend_memory_contexts":       read,
	"pg_get_shmem_allocations":             read,
	"pg_get_wal_resource_managers":         read,
	"pg_get_wal_replay_pause_state":        read,
	"pg_is_in_recovery":                    read,
	"pg_is_wal_replay_paused":              read,
	"pg_jit_available":                     read,
	"pg_last_wal_receive_lsn":              read,
	"pg_last_wal_replay_lsn":               read,
	"pg_last_xact_replay_timestamp":        read,
	"pg_current_wal_lsn":                   read,
	"pg_current_wal_insert_lsn":            read,
	"pg_current_wal_flush_lsn":             read,
	"pg_control_checkpoint":                read,
	"pg_control_init":                      read,
	"pg_control_recovery":                  read,
	"pg_control_system":                    read,
	"pg_database_size":                     read,
	"pg_relation_size":                     read,
	"pg_table_size":                        read,
	"pg_indexes_size":                      read,
	"pg_total_relation_size":               read,
	"pg_tablespace_size":                   read,
	"pg_collation_actual_version":          read,
	"pg_database_collation_actual_version": read,
	"pg_partition_ancestors":               read,
	"pg_partition_tree":                    read,
	"pg_notification_queue_usage":          read,
	"amvalidate":                           read,
}

// knownPrefixes classify families of functions by name prefix.
var knownPrefixes = []struct {
	prefix string
	info   FunctionInfo
}{
	{"dblink", adminOpaque},      // dblink extension: another server, any SQL
	{"binary_upgrade_", admin},   // pg_upgrade's catalog surgery
	{"pg_stat_get_", read},       // statistics counters
	{"pg_stat_statements", read}, // pg_stat_statements views' functions (reset is above)
}

//go:embed builtin_functions.txt
var builtinFunctionsTxt string

// pureBuiltins are the pg_catalog functions whose every overload is
// immutable or stable: they cannot change the database, and their result
// derives from their arguments (or from the catalog).
var pureBuiltins = func() map[string]struct{} {
	m := make(map[string]struct{}, 2600)
	for _, line := range strings.Split(builtinFunctionsTxt, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m[line] = struct{}{}
	}
	return m
}()
