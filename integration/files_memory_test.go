package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestProxyMemoryAfterDownloads: downloads whose clients lag make the
// proxy buffer each stream's window (yamux's receive buffer, up to 4 MiB,
// a bytes.Buffer of up to 8 MiB). The transport keeps those streams
// pooled afterwards; the proxy frees their buffers once each answer is
// relayed and trims, so its RSS comes back near the figure before.
// Without that it held them for as long as the streams stayed pooled.
func TestProxyMemoryAfterDownloads(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	const size, clients = 24 << 20, 8
	s.JSON("PUT", filePath("lag.bin"), newSeeded(3, size), 204, nil)
	pid := s.ProxyPid()
	before := vmKB(t, pid, "VmRSS")

	errs := make(chan error, clients)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	for i := 0; i < clients; i++ {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			resp, err := tr.RoundTrip(s.Request(ctx, "GET", filePath("lag.bin"), nil))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			// Lag: the sockets' buffers fill, then the proxy's stream buffer.
			time.Sleep(1500 * time.Millisecond)
			n, err := io.Copy(io.Discard, resp.Body)
			if err == nil && n != size {
				err = fmt.Errorf("%d of %d bytes", n, size)
			}
			errs <- err
		}()
	}
	for i := 0; i < clients; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("download: %v", err)
		}
	}
	peak := vmKB(t, pid, "VmHWM")
	// memtrim acts on the second quiet 2 s tick at the latest.
	var after int64
	for i := 0; i < 40; i++ {
		time.Sleep(250 * time.Millisecond)
		if after = vmKB(t, pid, "VmRSS"); after-before < 16<<10 {
			break
		}
	}
	t.Logf("proxy RSS before %d KiB, peak %d KiB, after %d KiB", before, peak, after)
	if after-before >= 16<<10 {
		t.Fatalf("proxy RSS still %d KiB above the figure before the downloads 10 s after them (peak %d KiB)", after-before, peak-before)
	}
}

// TestProxyStalledDownloadsBounded: a client opens 240 downloads, reads a
// little of each and stops reading. Each stream's window of data then
// waits in tl-proxy: a whole 4 MiB window per stream made the proxy grow
// by 885 MB. With the process's receive budget (uplink.RecvBudgetBytes)
// windows stop growing past 256 KiB once it is spent, so the proxy holds
// about 64 MiB plus 256 KiB per stream; every download still completes
// when its client reads again.
func TestProxyStalledDownloadsBounded(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	const size, clients = 16 << 20, 240
	s.JSON("PUT", filePath("stall.bin"), newSeeded(5, size), 204, nil)
	pid := s.ProxyPid()
	before := vmKB(t, pid, "VmRSS")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tr := &http.Transport{MaxConnsPerHost: clients, MaxIdleConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	var resps []*http.Response
	defer func() {
		for _, r := range resps {
			r.Body.Close()
		}
	}()
	for i := 0; i < clients; i++ {
		resp, err := tr.RoundTrip(s.Request(ctx, "GET", filePath("stall.bin"), nil))
		if err != nil {
			t.Fatalf("download %d: %v", i, err)
		}
		resps = append(resps, resp)
		if _, err := io.ReadFull(resp.Body, make([]byte, 1<<20)); err != nil {
			t.Fatalf("download %d: %v", i, err)
		}
	}
	// Let every stream fill what its window allows.
	time.Sleep(2 * time.Second)
	held := vmKB(t, pid, "VmRSS") - before
	t.Logf("proxy RSS %d KiB above the figure before with %d stalled downloads", held, clients)
	const bound = 256 << 10 // KiB
	if held > bound {
		t.Fatalf("%d stalled downloads grew the proxy by %d KiB, want at most %d", clients, held, bound)
	}
	// Nothing was lost: each finishes when read again.
	for i, r := range resps {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil || n != size-1<<20 {
			t.Fatalf("download %d: %d more bytes (%v), want %d", i, n, err, size-1<<20)
		}
	}
}
