package sql

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sluicehq/sluice/policies"
)

// stmtClasses is the class of each statement whose class does not depend
// on its contents. Statements whose class does are handled in walk.go; a
// statement in neither place (a parser upgrade brought a new one) is admin
// (see unlistedStatement).
var stmtClasses = func() map[protoreflect.FullName]policies.OperationClass {
	m := map[protoreflect.FullName]policies.OperationClass{}
	add := func(c policies.OperationClass, msgs ...proto.Message) {
		for _, msg := range msgs {
			m[msg.ProtoReflect().Descriptor().FullName()] = c
		}
	}
	// Session and transaction housekeeping a read-only agent needs.
	add(policies.ClassRead,
		&pg_query.VariableShowStmt{}, &pg_query.ListenStmt{}, &pg_query.UnlistenStmt{},
		&pg_query.ConstraintsSetStmt{}, &pg_query.ReturnStmt{}, &pg_query.PLAssignStmt{},
		&pg_query.SetOperationStmt{})
	// Data changes others can see: NOTIFY reaches other sessions; LOCK
	// blocks them, as SELECT ... FOR UPDATE does.
	add(policies.ClassWrite, &pg_query.NotifyStmt{}, &pg_query.LockStmt{})
	// Schema changes within the privileges of an object's owner. TRUNCATE
	// is here rather than in write: it empties a whole table at once,
	// bypassing row-level security and ON DELETE triggers, under its own
	// privilege and an ACCESS EXCLUSIVE lock, as DROP would.
	add(policies.ClassDDL,
		&pg_query.CreateSchemaStmt{}, &pg_query.ReplicaIdentityStmt{}, &pg_query.AlterCollationStmt{},
		&pg_query.AlterDomainStmt{}, &pg_query.CreateStmt{}, &pg_query.CreateForeignTableStmt{},
		&pg_query.ImportForeignSchemaStmt{}, &pg_query.CreateTrigStmt{}, &pg_query.CreateSeqStmt{},
		&pg_query.AlterSeqStmt{}, &pg_query.DefineStmt{}, &pg_query.CreateDomainStmt{},
		&pg_query.CreateOpClassStmt{}, &pg_query.CreateOpFamilyStmt{}, &pg_query.AlterOpFamilyStmt{},
		&pg_query.TruncateStmt{}, &pg_query.CommentStmt{}, &pg_query.IndexStmt{},
		&pg_query.CreateStatsStmt{}, &pg_query.AlterStatsStmt{}, &pg_query.AlterFunctionStmt{},
		&pg_query.AlterObjectDependsStmt{}, &pg_query.AlterObjectSchemaStmt{},
		&pg_query.AlterOperatorStmt{}, &pg_query.AlterTypeStmt{}, &pg_query.RuleStmt{},
		&pg_query.CompositeTypeStmt{}, &pg_query.CreateEnumStmt{}, &pg_query.CreateRangeStmt{},
		&pg_query.AlterEnumStmt{}, &pg_query.ViewStmt{}, &pg_query.CreateTableAsStmt{},
		&pg_query.CreateCastStmt{}, &pg_query.CreateTransformStmt{},
		&pg_query.AlterTSDictionaryStmt{}, &pg_query.AlterTSConfigurationStmt{})
	// Privileges, roles, server configuration, extensions, remote servers,
	// replication, and maintenance. Maintenance (VACUUM, ANALYZE, CLUSTER,
	// REINDEX, REFRESH MATERIALIZED VIEW, CHECKPOINT) is admin rather than
	// ddl: it changes no schema, but it is the operator's work, takes the
	// strongest locks and most I/O, and Postgres 17 puts it under the
	// MAINTAIN privilege and the pg_maintain role. Row-level security
	// policies are access control, like GRANT. DO runs code sluice cannot
	// see (doc.go); CALL is classified in walk.go.
	add(policies.ClassAdmin,
		&pg_query.GrantStmt{}, &pg_query.GrantRoleStmt{}, &pg_query.AlterDefaultPrivilegesStmt{},
		&pg_query.CreateTableSpaceStmt{}, &pg_query.DropTableSpaceStmt{},
		&pg_query.AlterTableSpaceOptionsStmt{}, &pg_query.AlterTableMoveAllStmt{},
		&pg_query.CreateExtensionStmt{}, &pg_query.AlterExtensionStmt{},
		&pg_query.AlterExtensionContentsStmt{}, &pg_query.CreateFdwStmt{}, &pg_query.AlterFdwStmt{},
		&pg_query.CreateForeignServerStmt{}, &pg_query.AlterForeignServerStmt{},
		&pg_query.CreateUserMappingStmt{}, &pg_query.AlterUserMappingStmt{},
		&pg_query.DropUserMappingStmt{}, &pg_query.CreatePolicyStmt{}, &pg_query.AlterPolicyStmt{},
		&pg_query.CreateAmStmt{}, &pg_query.CreateEventTrigStmt{}, &pg_query.AlterEventTrigStmt{},
		&pg_query.CreatePLangStmt{}, &pg_query.CreateRoleStmt{}, &pg_query.AlterRoleStmt{},
		&pg_query.AlterRoleSetStmt{}, &pg_query.DropRoleStmt{}, &pg_query.SecLabelStmt{},
		&pg_query.AlterOwnerStmt{}, &pg_query.LoadStmt{}, &pg_query.CreatedbStmt{},
		&pg_query.AlterDatabaseStmt{}, &pg_query.AlterDatabaseRefreshCollStmt{},
		&pg_query.AlterDatabaseSetStmt{}, &pg_query.DropdbStmt{}, &pg_query.AlterSystemStmt{},
		&pg_query.ClusterStmt{}, &pg_query.VacuumStmt{}, &pg_query.RefreshMatViewStmt{},
		&pg_query.CheckPointStmt{}, &pg_query.ReindexStmt{}, &pg_query.CreateConversionStmt{},
		&pg_query.DropOwnedStmt{}, &pg_query.ReassignOwnedStmt{},
		&pg_query.CreatePublicationStmt{}, &pg_query.AlterPublicationStmt{},
		&pg_query.CreateSubscriptionStmt{}, &pg_query.AlterSubscriptionStmt{},
		&pg_query.DropSubscriptionStmt{}, &pg_query.DoStmt{})
	return m
}()

// adminObjects are the object types whose DROP or RENAME is admin, like
// their CREATE.
var adminObjects = map[pg_query.ObjectType]bool{
	pg_query.ObjectType_OBJECT_ACCESS_METHOD:  true,
	pg_query.ObjectType_OBJECT_CONVERSION:     true,
	pg_query.ObjectType_OBJECT_DATABASE:       true,
	pg_query.ObjectType_OBJECT_EVENT_TRIGGER:  true,
	pg_query.ObjectType_OBJECT_EXTENSION:      true,
	pg_query.ObjectType_OBJECT_FDW:            true,
	pg_query.ObjectType_OBJECT_FOREIGN_SERVER: true,
	pg_query.ObjectType_OBJECT_LANGUAGE:       true,
	pg_query.ObjectType_OBJECT_POLICY:         true,
	pg_query.ObjectType_OBJECT_PUBLICATION:    true,
	pg_query.ObjectType_OBJECT_ROLE:           true,
	pg_query.ObjectType_OBJECT_SUBSCRIPTION:   true,
	pg_query.ObjectType_OBJECT_TABLESPACE:     true,
	pg_query.ObjectType_OBJECT_USER_MAPPING:   true,
}

// relationObjects are the object types DROP names as relations.
var relationObjects = map[pg_query.ObjectType]bool{
	pg_query.ObjectType_OBJECT_TABLE:         true,
	pg_query.ObjectType_OBJECT_VIEW:          true,
	pg_query.ObjectType_OBJECT_MATVIEW:       true,
	pg_query.ObjectType_OBJECT_FOREIGN_TABLE: true,
	pg_query.ObjectType_OBJECT_SEQUENCE:      true,
	pg_query.ObjectType_OBJECT_INDEX:         true,
}

// adminAlterTable are ALTER TABLE subcommands that change who may do what.
var adminAlterTable = map[pg_query.AlterTableType]bool{
	pg_query.AlterTableType_AT_ChangeOwner:        true,
	pg_query.AlterTableType_AT_EnableRowSecurity:  true,
	pg_query.AlterTableType_AT_DisableRowSecurity: true,
	pg_query.AlterTableType_AT_ForceRowSecurity:   true,
	pg_query.AlterTableType_AT_NoForceRowSecurity: true,
}
