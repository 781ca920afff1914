package audit

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// CheckpointKind says why a checkpoint was written.
type CheckpointKind string

// Checkpoint kinds.
const (
	// CheckpointStart opens a new chain: Seq 0, zero head.
	CheckpointStart CheckpointKind = "start"
	// CheckpointResume is written when a writer with a fixed id reopens its
	// chain: it seals the head it found.
	CheckpointResume CheckpointKind = "resume"
	// CheckpointPeriodic seals the head every N events or T seconds.
	CheckpointPeriodic CheckpointKind = "periodic"
	// CheckpointFinal seals the head at a clean Close: no event may follow.
	CheckpointFinal CheckpointKind = "final"
	// CheckpointRetention records a new chain base: events up to and
	// including Seq were removed, and the chain continues from Head.
	CheckpointRetention CheckpointKind = "retention"
)

// Checkpoint is a signed statement that a chain's event Seq has hash Head.
type Checkpoint struct {
	// ID orders checkpoints in the store; it is not signed.
	ID     int64
	Writer string
	Kind   CheckpointKind
	Seq    int64
	Head   Hash
	Time   time.Time
	// Key is the public key that signed it.
	Key ed25519.PublicKey
	Sig []byte
	// Witness holds the heads of the store's other chains as this writer
	// found them: all of them at its start (or resume), those that moved
	// since on its later checkpoints. A chain cut short
	// together with its own checkpoints still has to reach the head
	// another chain's signed checkpoint saw (see Verify).
	Witness []ChainHead
}

// ChainHead is the last event of a chain: its seq and hash.
type ChainHead struct {
	Writer string `json:"writer"`
	Seq    int64  `json:"seq"`
	Head   Hash   `json:"head"`
}

type checkpointJSON struct {
	V       int            `json:"v"`
	Writer  string         `json:"writer"`
	Kind    CheckpointKind `json:"kind"`
	Seq     int64          `json:"seq"`
	Head    Hash           `json:"head"`
	Time    time.Time      `json:"time"`
	Key     string         `json:"key"`
	Witness []ChainHead    `json:"witness,omitempty"`
}

func (c Checkpoint) body() ([]byte, error) {
	return marshal(checkpointJSON{V: SchemaVersion, Writer: c.Writer, Kind: c.Kind, Seq: c.Seq, Head: c.Head, Time: c.Time.UTC(), Key: hex.EncodeToString(c.Key), Witness: c.Witness})
}

func decodeCheckpoint(body []byte) (Checkpoint, error) {
	var j checkpointJSON
	if err := json.Unmarshal(body, &j); err != nil {
		return Checkpoint{}, err
	}
	key, err := hex.DecodeString(j.Key)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return Checkpoint{}, fmt.Errorf("checkpoint key is not an ed25519 public key")
	}
	return Checkpoint{Writer: j.Writer, Kind: j.Kind, Seq: j.Seq, Head: j.Head, Time: j.Time, Key: key, Witness: j.Witness}, nil
}

// Signer signs checkpoints with an ed25519 key.
type Signer struct {
	key ed25519.PrivateKey
	// Ephemeral is set for a key generated at start, not read from a file:
	// its checkpoints cannot be verified against a key the operator holds.
	Ephemeral bool
}

// NewSigner signs with key.
func NewSigner(key ed25519.PrivateKey) *Signer { return &Signer{key: key} }

// EphemeralSigner generates a key that lives as long as the process.
func EphemeralSigner() (*Signer, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Signer{key: k, Ephemeral: true}, nil
}

// Public returns the public key that verifies the signer's checkpoints.
func (s *Signer) Public() ed25519.PublicKey { return s.key.Public().(ed25519.PublicKey) }

// sign fills in c.Key and c.Sig and returns the signed body.
func (s *Signer) sign(c *Checkpoint) ([]byte, error) {
	c.Key = s.Public()
	body, err := c.body()
	if err != nil {
		return nil, err
	}
	c.Sig = ed25519.Sign(s.key, body)
	return body, nil
}

// KeyID is a short name for a public key: the first 8 bytes in hex.
func KeyID(k ed25519.PublicKey) string {
	if len(k) < 8 {
		return "invalid"
	}
	return hex.EncodeToString(k[:8])
}

// LoadSigningKey reads audit.signing_key_file. Accepted formats:
//   - PEM "PRIVATE KEY" (PKCS #8), as written by `sluice audit keygen` or
//     `openssl genpkey -algorithm ed25519`;
//   - a raw 32-byte ed25519 seed;
//   - the seed as 64 hex digits (surrounding whitespace ignored).
func LoadSigningKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "PRIVATE KEY" {
			return nil, fmt.Errorf("%s: PEM block %q, expected PRIVATE KEY (PKCS #8 ed25519)", path, blk.Type)
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		ek, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("%s: a %T, expected an ed25519 key", path, k)
		}
		return ek, nil
	}
	if len(b) == ed25519.SeedSize {
		return ed25519.NewKeyFromSeed(b), nil
	}
	if s := strings.TrimSpace(string(b)); len(s) == 2*ed25519.SeedSize {
		if seed, err := hex.DecodeString(s); err == nil {
			return ed25519.NewKeyFromSeed(seed), nil
		}
	}
	return nil, fmt.Errorf("%s: expected a PEM PKCS #8 ed25519 key, a 32-byte seed or 64 hex digits", path)
}

// LoadPublicKey reads a PEM "PUBLIC KEY" (PKIX), or derives the public key
// from anything LoadSigningKey accepts.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil && blk.Type == "PUBLIC KEY" {
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		ek, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("%s: a %T, expected an ed25519 key", path, k)
		}
		return ek, nil
	}
	priv, err := LoadSigningKey(path)
	if err != nil {
		return nil, err
	}
	return priv.Public().(ed25519.PublicKey), nil
}

// GenerateKey returns a new signing key as PEM (PKCS #8) and its public
// key as PEM (PKIX).
func GenerateKey() (private, public []byte, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), nil
}

var errNoKey = errors.New("no signing key")
