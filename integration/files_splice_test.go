package integration

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSplicedTransfers: downloads and uploads through the real proxy take
// its splice paths (between the uplink's socket and the client's through
// a pipe, counted in tl_proxy_spliced_bytes_total) and arrive exact: a
// whole file and a Range at an odd offset with Go's client, a small file
// the usual way; uploads from Go's client and from curl (Expect:
// 100-continue), after which the client's next request works; a client
// that reads slowly holds up nobody else of the sandbox, and one that
// goes away leaves no pipe behind in the proxy.
func TestSplicedTransfers(t *testing.T) {
	RequireRoot(t)
	opAddr, opKey := freeAddr(t), "tl_op_"+randHex(16)
	s := Start(t, Options{
		ProxyArgs:   []string{"--operator-addr", opAddr},
		ProxyConfig: func(cfg map[string]any) { cfg["operator_keys"] = map[string]string{opKey: "tester"} },
	})
	ensureUser(t, s)
	counter := func(t *testing.T, direction string) float64 {
		t.Helper()
		status, body := scrapeOperator(t, opAddr, opKey)
		if status != 200 {
			t.Fatalf("scrape: %d", status)
		}
		return sampleOf(body, `tl_proxy_spliced_bytes_total{direction="`+direction+`",kind="api"}`)
	}
	spliced := func(t *testing.T) float64 { return counter(t, "from_sandbox") }
	const size = 40 << 20
	h := sha256.New()
	s.JSON("PUT", filePath("splice.bin"), io.TeeReader(newSeeded(7, size), h), 204, nil)
	want := h.Sum(nil)
	download := func(t *testing.T, rangeHeader string, wantStatus int) ([]byte, int64) {
		t.Helper()
		req := s.Request(context.Background(), "GET", filePath("splice.bin"), nil)
		if rangeHeader != "" {
			req.Header.Set("Range", rangeHeader)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != wantStatus {
			t.Fatalf("GET %q: %v %v", rangeHeader, resp, err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			t.Fatalf("GET %q: %d bytes: %v", rangeHeader, n, err)
		}
		return h.Sum(nil), n
	}
	rule(t, s, "a whole download is exact and spliced", func(t *testing.T) {
		before := spliced(t)
		sum, n := download(t, "", 200)
		if n != size || string(sum) != string(want) {
			t.Fatalf("%d bytes, checksum equal %v", n, string(sum) == string(want))
		}
		if got := spliced(t) - before; got < size/2 {
			t.Fatalf("%.0f of %d bytes spliced", got, size)
		}
	})
	rule(t, s, "a range at an odd offset is exact and spliced", func(t *testing.T) {
		const off = 777_777
		wh, src := sha256.New(), newSeeded(7, size)
		_, _ = io.CopyN(io.Discard, src, off)
		_, _ = io.Copy(wh, src)
		before := spliced(t)
		sum, n := download(t, "bytes="+strconv.Itoa(off)+"-", 206)
		if n != size-off || string(sum) != string(wh.Sum(nil)) {
			t.Fatalf("%d bytes, want %d; checksum equal %v", n, size-off, string(sum) == string(wh.Sum(nil)))
		}
		if got := spliced(t) - before; got <= 0 {
			t.Fatalf("%.0f bytes spliced", got)
		}
	})
	rule(t, s, "a small file is not spliced", func(t *testing.T) {
		small := strings.Repeat("s", 100<<10)
		s.JSON("PUT", filePath("small.bin"), small, 204, nil)
		before := spliced(t)
		resp := s.Do("GET", filePath("small.bin"), nil)
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(got) != small {
			t.Fatalf("%d bytes back of %d", len(got), len(small))
		}
		if d := spliced(t) - before; d != 0 {
			t.Fatalf("%.0f bytes spliced", d)
		}
	})
	rule(t, s, "an upload is spliced, lands exact, and the next request works", func(t *testing.T) {
		const up = 24 << 20
		before := counter(t, "to_sandbox")
		h := sha256.New()
		req := s.Request(context.Background(), "PUT", filePath("up.bin"), io.TeeReader(newSeeded(9, up), h))
		req.ContentLength = up
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 204 {
			t.Fatalf("PUT: %v %v", resp, err)
		}
		resp.Body.Close()
		if !resp.Close {
			t.Error("the answer to a spliced upload does not close the connection")
		}
		if got := counter(t, "to_sandbox") - before; got < up/2 {
			t.Fatalf("%.0f of %d bytes spliced", got, up)
		}
		back := s.Do("GET", filePath("up.bin"), nil) // the same client
		sum := sha256.New()
		n, err := io.Copy(sum, back.Body)
		back.Body.Close()
		if err != nil || n != up || string(sum.Sum(nil)) != string(h.Sum(nil)) {
			t.Fatalf("read back: %d bytes, %v, checksum equal %v", n, err, string(sum.Sum(nil)) == string(h.Sum(nil)))
		}
	})
	rule(t, s, "curl's upload (Expect: 100-continue) is spliced and lands exact", func(t *testing.T) {
		src := t.TempDir() + "/curl.bin"
		f, err := os.Create(src)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(f, h), newSeeded(11, 8<<20+3)); err != nil {
			t.Fatal(err)
		}
		f.Close()
		before := counter(t, "to_sandbox")
		r := curl(t, "-T", src, "-H", "Host: "+s.SandboxID+".local", "-H", "Authorization: Bearer "+s.APIKey, s.BaseURL()+filePath("curl.bin"))
		if r.status != 204 {
			t.Fatalf("curl -T: %d %s", r.status, r.body)
		}
		if got := counter(t, "to_sandbox") - before; got < 4<<20 {
			t.Fatalf("%.0f bytes spliced", got)
		}
		got, err := os.ReadFile(s.SandboxPath("/home/tl-user/curl.bin"))
		sum := sha256.Sum256(got)
		if err != nil || string(sum[:]) != string(h.Sum(nil)) {
			t.Fatalf("landed: %d bytes, %v", len(got), err)
		}
	})
	rule(t, s, "a client gone mid-upload leaves the old file whole and nothing behind", func(t *testing.T) {
		pid := s.ProxyPid()
		fds := func() int { e, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); return len(e) }
		idle := fds()
		oldSum := sha256.Sum256(mustRead(t, s.SandboxPath("/home/tl-user/up.bin")))
		c, err := net.Dial("tcp", s.HTTPAddr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "PUT %s HTTP/1.1\r\nHost: %s.local\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n",
			filePath("up.bin"), s.SandboxID, s.APIKey, 8<<20)
		if _, err := io.CopyN(c, newSeeded(13, 2<<20), 2<<20); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		c.Close()
		deadline := time.Now().Add(20 * time.Second)
		for {
			ents, _ := os.ReadDir(s.SandboxPath("/home/tl-user"))
			temp := ""
			for _, e := range ents {
				if strings.Contains(e.Name(), "tl-upload") {
					temp = e.Name()
				}
			}
			if temp == "" && fds() <= idle {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the cut: temporary file %q, proxy fds %d (%d before)", temp, fds(), idle)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if sha256.Sum256(mustRead(t, s.SandboxPath("/home/tl-user/up.bin"))) != oldSum {
			t.Fatal("the cut upload changed the file")
		}
	})
	rule(t, s, "a slow reader holds up nobody, and leaves no pipe when it goes", func(t *testing.T) {
		pid := s.ProxyPid()
		fds := func() int { e, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); return len(e) }
		idle := fds()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// curl reads at 1 MB/s and gives up after 4 s, mid-body.
		slow := exec.CommandContext(ctx, "curl", "-sS", "--limit-rate", "1M", "--max-time", "4", "-o", "/dev/null",
			"-H", "Host: "+s.SandboxID+".local", "-H", "Authorization: Bearer "+s.APIKey, s.BaseURL()+filePath("splice.bin"))
		if err := slow.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if r := run(t, s, map[string]any{"command": "echo", "args": []string{"beside"}}); len(r.stdout) != 1 || r.stdout[0] != "beside" {
			t.Fatalf("a run beside the slow download: %+v", r)
		}
		if err := slow.Wait(); err == nil {
			t.Fatal("curl got 40 MiB at 1 MB/s in 4 s")
		}
		deadline := time.Now().Add(20 * time.Second)
		for fds() > idle {
			if time.Now().After(deadline) {
				t.Fatalf("the proxy holds %d fds, %d before the download", fds(), idle)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

// sampleOf is the value of the sample line starting with name in a
// Prometheus exposition, 0 when there is none.
func sampleOf(body, name string) float64 {
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
