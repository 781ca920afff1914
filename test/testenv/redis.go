package testenv

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// redisStartAttempts bounds the retries when another process takes the
// free port between picking it and redis-server binding it.
const redisStartAttempts = 5

// StartRedis starts a real redis-server on 127.0.0.1 on a free port, with
// no persistence and its working directory in t.TempDir(), waits until it
// answers PING, and stops it at cleanup. It returns "127.0.0.1:PORT".
//
// Without redis-server on PATH the test fails, telling how to install it:
// CI must not silently skip. SLUICE_ALLOW_SKIP=1 makes it skip instead.
func StartRedis(t testing.TB) (addr string) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("SLUICE_ALLOW_SKIP") == "1" {
			t.Skip("redis-server not on PATH (SLUICE_ALLOW_SKIP=1)")
		}
		t.Fatal("redis-server not on PATH: install it (Debian/Ubuntu: apt-get install -y redis-server; macOS: brew install redis), or set SLUICE_ALLOW_SKIP=1 to skip these tests")
	}
	dir := t.TempDir()
	var lastErr error
	for range redisStartAttempts {
		port, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		addr, lastErr = startRedis(t, bin, dir, port)
		if lastErr == nil {
			return addr
		}
	}
	t.Fatalf("start redis-server: %v", lastErr)
	return ""
}

func startRedis(t testing.TB, bin, dir string, port int) (string, error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var out SyncBuffer
	cmd := exec.Command(bin,
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir,
		"--daemonize", "no", "--loglevel", "warning",
	)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exited:
			// Most likely the port was taken after FreePort released it.
			return "", fmt.Errorf("redis-server on port %d exited: %s", port, strings.TrimSpace(out.String()))
		default:
		}
		if pid, err := serverPID(addr); err == nil {
			if pid != cmd.Process.Pid {
				// Another test's server took the port first; ours exits.
				stop()
				return "", fmt.Errorf("port %d is taken by another redis-server (pid %d)", port, pid)
			}
			break
		}
		if time.Now().After(deadline) {
			stop()
			return "", fmt.Errorf("redis-server on %s did not answer PING within 10s: %s", addr, strings.TrimSpace(out.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(stop)
	return addr, nil
}

// serverPID sends PING and INFO server over a fresh connection and
// returns the process id of the server that answered, so that a server
// another test started on the same port is not taken for ours.
func serverPID(addr string) (int, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\nINFO server\r\n")); err != nil {
		return 0, err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return 0, fmt.Errorf("PING answered %q", line)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return 0, fmt.Errorf("INFO server: %w", err)
		}
		if v, ok := strings.CutPrefix(line, "process_id:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
}
