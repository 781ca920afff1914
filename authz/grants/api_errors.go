package grants

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// ErrorCode is the stable code of an API error: clients branch on it and
// metrics use it as a label. The reason beside it is for people.
type ErrorCode string

// Error codes, with the status they come with.
const (
	CodeUnauthenticated      ErrorCode = "unauthenticated"       // 401
	CodeForbidden            ErrorCode = "forbidden"             // 403: not an approver, not yours
	CodeSelfApproval         ErrorCode = "self_approval"         // 403
	CodeDeniedByPolicy       ErrorCode = "denied_by_policy"      // 403: no grant could help
	CodeNotFound             ErrorCode = "not_found"             // 404: no such grant or endpoint
	CodeUnknownTarget        ErrorCode = "unknown_target"        // 404
	CodeMethodNotAllowed     ErrorCode = "method_not_allowed"    // 405
	CodeInvalidJSON          ErrorCode = "invalid_json"          // 400
	CodeUnknownField         ErrorCode = "unknown_field"         // 400
	CodeInvalidRequest       ErrorCode = "invalid_request"       // 400
	CodeDurationTooLong      ErrorCode = "duration_too_long"     // 400
	CodeStatementUnsupported ErrorCode = "statement_unsupported" // 400
	CodeBodyTooLarge         ErrorCode = "body_too_large"        // 413
	CodeNotPending           ErrorCode = "not_pending"           // 409
	CodeNotApproved          ErrorCode = "not_approved"          // 409
	CodeExpired              ErrorCode = "expired"               // 409
	CodeAuditFailed          ErrorCode = "audit_failed"          // 503
	CodeUnavailable          ErrorCode = "unavailable"           // 503
)

// ErrorResponse is every error body the API sends.
type ErrorResponse struct {
	Error  ErrorCode `json:"error"`
	Reason string    `json:"reason"`
	// State is the grant's current state, on a 409.
	State string `json:"state,omitempty"`
	// MaxDuration is the longest duration allowed, on duration_too_long.
	MaxDuration string `json:"max_duration,omitempty"`
}

// apiError is an ErrorResponse with its HTTP status.
type apiError struct {
	status int
	body   ErrorResponse
}

func (e *apiError) Error() string { return string(e.body.Error) + ": " + e.body.Reason }

func errorf(status int, code ErrorCode, format string, args ...any) *apiError {
	return &apiError{status: status, body: ErrorResponse{Error: code, Reason: fmt.Sprintf(format, args...)}}
}

// asAPIError translates a store error at the edge. The store's messages
// name the grant and the state, so they are the reasons.
func (a *API) asAPIError(err error) *apiError {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, ErrNotFound):
		return errorf(http.StatusNotFound, CodeNotFound, "%v", err)
	case errors.Is(err, ErrSelfApproval):
		return errorf(http.StatusForbidden, CodeSelfApproval, "%v", err)
	case errors.Is(err, ErrExpired):
		e := errorf(http.StatusConflict, CodeExpired, "%v", err)
		e.body.State = StateExpired.String()
		return e
	case errors.Is(err, ErrNotPending):
		return errorf(http.StatusConflict, CodeNotPending, "%v", err)
	case errors.Is(err, ErrNotApproved):
		return errorf(http.StatusConflict, CodeNotApproved, "%v", err)
	case errors.Is(err, ErrInvalid):
		return errorf(http.StatusBadRequest, CodeInvalidRequest, "%v", err)
	}
	a.log.Error("grants API: grant store failed", "err", err)
	return errorf(http.StatusServiceUnavailable, CodeUnavailable, "the grant store is unavailable; try again (GET the grant to see its state)")
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, e.body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
