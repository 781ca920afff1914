// Package mask redacts values before they reach an agent: column rules from
// policy (which columns to mask), detectors that find personal data and
// secrets in values no rule names, and type-aware replacement that keeps
// every masked value decodable by the client's driver.
//
// It is pure: Postgres type OIDs, format codes and bytes in, bytes out. The
// Postgres session (filters/postgres) decides which result columns to mask
// from the statement's column lineage (filters/sql) and calls Value for
// each cell; the HTTP path masks JSON with the same detectors.
//
// # Replacement rules (design.md section 6)
//
//   - NULL stays NULL: masking never reveals whether a value was present
//     by turning NULL into something.
//   - Text types (text, varchar, bpchar, name, citext and unknown text) keep
//     their shape in text format: letters become 'x', digits '0', and
//     punctuation and spaces stay, so "alice@example.com" becomes
//     "xxxxx@xxxxxxx.xxx" and a card number keeps its grouping. In binary
//     format the same bytes are sent (text's binary form is its bytes).
//   - uuid becomes the nil UUID (text and binary).
//   - json and jsonb become the JSON string "[masked]" (jsonb binary form
//     is a version byte then the text).
//   - Every other type — numbers, dates, timestamps, booleans, bytea,
//     arrays, composites, types sluice does not know — becomes NULL, the
//     one value every driver decodes for every type.
package mask
