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
