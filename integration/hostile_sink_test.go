package integration

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tensorlake/tl-agent/uplink"
)

// lockedConn makes each Write to the uplink atomic, so a test can put
// raw frames on the link between the session's own (header-only) writes.
type lockedConn struct {
	net.Conn
	mu sync.Mutex
}

func (c *lockedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.Write(p)
}

// writeSyscalls is the process's count of write-like system calls
// (/proc/PID/io syscw).
func writeSyscalls(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "syscw: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatal("no syscw in /proc/PID/io")
	return 0
}

// TestAgentTinyFrameFloodOnUpgradedRoute: a hostile agent answers a port
// route's upgrade and then floods the stream with 50,000 1-byte frames in
// one write. tl-proxy hands a relay's small frames straight to the
// client's socket only when each arrived alone (yamux copy, SinkTo), so
// the flood is read in bulk: far fewer write syscalls than frames, and
// the client gets every byte in order.
func TestAgentTinyFrameFloodOnUpgradedRoute(t *testing.T) {
	s := Start(t, Options{NoAgent: true})
	pid := s.ProxyPid()
	var lc *lockedConn
	f, err := dialFakeLink(s.UplinkAddr, s.SandboxID, []byte(s.Token), false, func(c net.Conn) net.Conn {
		lc = &lockedConn{Conn: c}
		return lc
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sess := f.sess
	const frames = 50000
	flooded := make(chan error, 1)
	go func() {
		st, err := sess.AcceptStream()
		if err != nil {
			flooded <- err
			return
		}
		if _, err := uplink.ReadHeader(st); err != nil {
			flooded <- err
			return
		}
		_ = uplink.WriteReply(st, uplink.StatusOK, "")
		if _, err := http.ReadRequest(bufio.NewReader(st)); err != nil {
			flooded <- err
			return
		}
		if _, err := io.WriteString(st, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: flood\r\n\r\n"); err != nil {
			flooded <- err
			return
		}
		time.Sleep(200 * time.Millisecond) // the 101 reaches the client first
		raw := make([]byte, 0, frames*13)
		var h [12]byte
		for i := 0; i < frames; i++ {
			h[0], h[1] = 0, 0 // version, data
			binary.BigEndian.PutUint16(h[2:4], 0)
			binary.BigEndian.PutUint32(h[4:8], st.StreamID())
			binary.BigEndian.PutUint32(h[8:12], 1)
			raw = append(append(raw, h[:]...), byte('a'+i%26))
		}
		_, err = lc.Write(raw)
		flooded <- err
	}()

	client, err := net.Dial("tcp", s.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	_ = client.SetDeadline(time.Now().Add(60 * time.Second))
	req := s.PortRequest(context.Background(), "GET", 7777, "/", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "flood")
	if err := req.Write(client); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(client)
	resp, err := http.ReadResponse(br, req)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	before := writeSyscalls(t, pid)
	if err := <-flooded; err != nil {
		t.Fatalf("flood: %v", err)
	}
	got := make([]byte, frames)
	if _, err := io.ReadFull(br, got); err != nil {
		t.Fatalf("client read: %v", err)
	}
	for i, b := range got {
		if b != byte('a'+i%26) {
			t.Fatalf("byte %d is %q, want %q", i, b, byte('a'+i%26))
		}
	}
	writes := writeSyscalls(t, pid) - before
	t.Logf("%d one-byte frames: tl-proxy made %d write syscalls", frames, writes)
	if writes > frames/10 {
		t.Fatalf("tl-proxy made %d write syscalls for %d flooded frames: written one by one", writes, frames)
	}
}
