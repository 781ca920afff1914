package audit

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// TestCanonicalEncoding pins schema version 1: a change to this body is a
// change to every hash, and needs a new SchemaVersion.
func TestCanonicalEncoding(t *testing.T) {
	r := Record{Writer: "w1", Seq: 2, Event: Event{
		Time: time.Date(2025, 3, 1, 3, 4, 5, 6, time.FixedZone("CET", 3600)), Kind: KindStatement,
		SessionID: "s", RequestID: "r", Principal: policies.Principal{Issuer: "https://idp", Subject: "agent", Groups: []string{"agents"}, Client: "c", OnBehalfOf: "bob"},
		Target: "orders-db", Source: "10.0.0.1:5", Request: "SELECT '<&>'", Classes: []policies.OperationClass{policies.ClassRead, policies.ClassWrite},
		Tables: []string{"orders"}, Decision: "allow", MaskedColumns: []string{"customers.email"}, Rows: 3, Bytes: 10,
		Duration: time.Millisecond, SQLState: "00000", GrantID: "g", TraceID: "t",
	}}
	r.Prev[0] = 0xab
	body, err := seal(&r)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"v":1,"writer":"w1","seq":2,"prev":"ab00000000000000000000000000000000000000000000000000000000000000","time":"2025-03-01T02:04:05.000000006Z","kind":"statement","session_id":"s","request_id":"r","principal":{"issuer":"https://idp","subject":"agent","groups":["agents"],"client":"c","on_behalf_of":"bob"},"target":"orders-db","source":"10.0.0.1:5","request":"SELECT '<&>'","classes":["read","write"],"tables":["orders"],"decision":"allow","masked_columns":["customers.email"],"rows":3,"bytes":10,"duration_ns":1000000,"sqlstate":"00000","grant_id":"g","trace_id":"t"}`
	if string(body) != want {
		t.Errorf("canonical body:\n got %s\nwant %s", body, want)
	}
	enc, err := encodeEvent(r.Event)
	if err != nil {
		t.Fatal(err)
	}
	r2 := r
	if spliced := sealEncoded(&r2, enc, []byte(`"w1"`)); string(spliced) != want || r2.Hash != r.Hash {
		t.Errorf("sealEncoded differs from canonical:\n got %s", spliced)
	}
	back, err := decodeBody(body)
	if err != nil {
		t.Fatal(err)
	}
	back.Hash = r.Hash
	if !back.Time.Equal(r.Time) {
		t.Errorf("time %v != %v", back.Time, r.Time)
	}
	back.Time, r.Time = time.Time{}, time.Time{}
	if !reflect.DeepEqual(back, r) {
		t.Errorf("round trip:\n got %+v\nwant %+v", back, r)
	}
	// Record's JSON (API, exports) reads back to the same record.
	j, _ := json.Marshal(r)
	var again Record
	if err := json.Unmarshal(j, &again); err != nil || !reflect.DeepEqual(again, r) {
		t.Errorf("Record JSON round trip: %v\n%s", err, j)
	}
}
