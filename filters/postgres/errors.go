package postgres

import (
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// fatal is an ErrorResponse that ends the connection.
func fatal(code, msg, detail, hint string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: noNUL(msg), Detail: noNUL(detail), Hint: noNUL(hint)}
}

// stmtError is an ErrorResponse for one statement; the session goes on.
func stmtError(code, msg, detail, hint string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: noNUL(msg), Detail: noNUL(detail), Hint: noNUL(hint)}
}

// noNUL drops NUL bytes: ErrorResponse fields are NUL-terminated, and a
// NUL in sluice's text (a policy's reason, say) would cut the message and
// shift every field after it.
func noNUL(s string) string { return strings.ReplaceAll(s, "\x00", "") }

// decodeError decodes an ErrorResponse body; a malformed one yields a
// zero ErrorResponse, which matches nothing sluice looks for.
func decodeError(body []byte) *pgproto3.ErrorResponse {
	var e pgproto3.ErrorResponse
	if e.Decode(body) != nil {
		return &pgproto3.ErrorResponse{}
	}
	return &e
}
