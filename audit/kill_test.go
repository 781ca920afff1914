package audit

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// The SIGKILL test re-executes this test binary as a helper process that
// appends in a burst and prints each acknowledged append; these name the
// store and key it uses.
const (
	killEnvURL = "SLUICE_AUDIT_KILL_URL"
	killEnvKey = "SLUICE_AUDIT_KILL_KEY"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(killEnvURL); url != "" {
		killHelper(url, os.Getenv(killEnvKey))
		return
	}
	os.Exit(m.Run())
}

// killHelper appends from 16 goroutines until it is killed, printing
// "writer seq request_id" for every Commit that returned nil.
func killHelper(url, seedHex string) {
	seed, err := hex.DecodeString(seedHex)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	s, err := Open(context.Background(), url, WithSigner(NewSigner(ed25519.NewKeyFromSeed(seed))), WithCheckpoints(100, time.Hour))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	var mu sync.Mutex
	for g := range 16 {
		go func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("g%d-%d", g, i)
				ev := statement("agent", "orders-db", "SELECT "+id, policies.ClassRead)
				ev.RequestID = id
				r, err := s.Commit(context.Background(), ev)
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Fprintf(os.Stdout, "%s %d %s\n", r.Writer, r.Seq, id) // unbuffered: one write per line
				mu.Unlock()
			}
		}()
	}
	select {}
}

// testKill kills the helper with SIGKILL mid-burst and checks that every
// append it acknowledged is in the store and that the chains verify.
func testKill(t *testing.T, e env) {
	url, _ := e.fresh(t)
	key := newKey(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), killEnvURL+"="+url, killEnvKey+"="+hex.EncodeToString(key.Seed()))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	type ack struct {
		writer string
		seq    int64
		id     string
	}
	var acks []ack
	sc := bufio.NewScanner(out)
	killed := false
	deadline := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
	defer deadline.Stop()
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue // a line cut by the kill
		}
		seq, _ := strconv.ParseInt(f[1], 10, 64)
		acks = append(acks, ack{f[0], seq, f[2]})
		if len(acks) == 2000 && !killed {
			killed = true
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("helper did not die by SIGKILL: %v\n%s", err, stderr.String())
	}

	s := openRO(t, url, key)
	stored := map[string]string{} // writer/seq → request id
	f := Filter{Limit: MaxQueryLimit}
	for {
		p, err := s.Query(context.Background(), f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range p.Records {
			stored[fmt.Sprintf("%s/%d", r.Writer, r.Seq)] = r.RequestID
		}
		if p.Next == "" {
			break
		}
		f.Cursor = p.Next
	}
	for _, a := range acks {
		if got, ok := stored[fmt.Sprintf("%s/%d", a.writer, a.seq)]; !ok || got != a.id {
			t.Fatalf("acknowledged append %s (%s seq %d) is not in the store (found %q)", a.id, a.writer, a.seq, got)
		}
	}
	rep := mustVerify(t, s)
	t.Logf("%d appends acknowledged before SIGKILL, %d stored; %s", len(acks), len(stored), strings.TrimSpace(rep.String()))
	if len(acks) < 2000 {
		t.Fatalf("only %d acknowledgements", len(acks))
	}
}
