package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/uplink"
)

// linkAnswerer links sandbox id of p to an in-memory agent that answers
// every metrics stream with answer.
func linkAnswerer(t *testing.T, p *Proxy, id string, answer func(w io.Writer)) {
	t.Helper()
	proxyEnd, agentEnd := net.Pipe()
	cs, err := yamux.Client(proxyEnd, uplink.MuxConfig(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	ss, err := yamux.Server(agentEnd, uplink.MuxConfig(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			st, err := ss.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				if h, err := uplink.ReadHeader(st); err != nil || h.Kind != uplink.KindMetrics {
					return
				}
				_ = uplink.WriteReply(st, uplink.StatusOK, "")
				answer(st)
			}()
		}
	}()
	t.Cleanup(func() { cs.Close(); ss.Close() })
	l := &Link{ID: id, sess: cs, Protocol: uplink.Version}
	if err := p.reg.registerV2(l, false, true, nil, []byte("secret")); err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
}

func honest(id string) func(io.Writer) {
	return func(w io.Writer) {
		fmt.Fprintf(w, "# TYPE tl_agent_goroutines gauge\ntl_agent_goroutines 7\n# TYPE tl_agent_info gauge\ntl_agent_info{version=%q} 1\n", id)
	}
}

// silent answers OK and then nothing until the stream is closed.
func silent(w io.Writer) { _, _ = io.Copy(io.Discard, w.(io.Reader)) }

// TestOperatorScrapeBounds: slow agents are asked in parallel within
// their timeout and the scrape's budget, so they neither stall the
// honest agents' series nor the scrape; every sandbox gets its up series.
func TestOperatorScrapeBounds(t *testing.T) {
	cfg := &Config{Sandboxes: map[string]SandboxConfig{}, APIKeys: map[string]string{"k": "u"}, OperatorKeys: map[string]string{"op-key-0123456789": "prom"}}
	const slow, good = 2 * AgentScrapeParallel, 3
	for i := range slow {
		cfg.Sandboxes[fmt.Sprintf("slow%02d", i)] = SandboxConfig{Token: "0123456789abcdef"}
	}
	for i := range good {
		cfg.Sandboxes[fmt.Sprintf("good%d", i)] = SandboxConfig{Token: "0123456789abcdef"}
	}
	p := mustNew(t, cfg)
	p.operator.agentTimeout = 300 * time.Millisecond
	for i := range slow {
		linkAnswerer(t, p, fmt.Sprintf("slow%02d", i), silent)
	}
	for i := range good {
		id := fmt.Sprintf("good%d", i)
		linkAnswerer(t, p, id, honest(id))
	}
	srv := httptest.NewServer(p.OperatorHandler(false))
	defer srv.Close()
	get := func(t *testing.T, key string) (int, string) {
		req, _ := http.NewRequest("GET", srv.URL+"/metrics", nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	t.Run("the door wants an operator key", func(t *testing.T) {
		for _, k := range []string{"", "k", "op-key-0123456789x"} {
			if code, _ := get(t, k); code != http.StatusUnauthorized {
				t.Errorf("key %q: %d, want 401", k, code)
			}
		}
	})
	t.Run("slow agents do not hide the honest ones", func(t *testing.T) {
		code, body := get(t, "op-key-0123456789")
		if code != 200 {
			t.Fatalf("scrape: %d", code)
		}
		for i := range good {
			for _, want := range []string{fmt.Sprintf(`tl_agent_goroutines{sandbox="good%d"} 7`, i), fmt.Sprintf(`tl_proxy_agent_up{sandbox="good%d"} 1`, i)} {
				if !strings.Contains(body, want+"\n") {
					t.Errorf("missing %q", want)
				}
			}
		}
		for i := range slow {
			if want := fmt.Sprintf(`tl_proxy_agent_up{sandbox="slow%02d"} 0`, i); !strings.Contains(body, want+"\n") {
				t.Errorf("missing %q", want)
			}
		}
		if want := fmt.Sprintf(`tl_proxy_agent_scrape_errors_total{reason="timeout"} %d`, slow); !strings.Contains(body, want+"\n") {
			t.Errorf("missing %q", want)
		}
	})
	t.Run("a scrape budget shorter than the agents' waits ends the scrape, and the rest are skipped", func(t *testing.T) {
		p.operator.agentTimeout = time.Minute
		req, _ := http.NewRequest("GET", srv.URL+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer op-key-0123456789")
		req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", "0.5")
		done := make(chan string, 1)
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				done <- err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			done <- string(b)
		}()
		select {
		case body := <-done:
			if !strings.Contains(body, "tl_proxy_sandboxes_known 35\n") || !strings.Contains(body, `tl_proxy_agent_up{sandbox="slow00"} 0`) ||
				!strings.Contains(body, `tl_proxy_agent_scrape_errors_total{reason="skipped"}`) {
				t.Fatalf("scrape under a short budget:\n%s", body)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the scrape outlived its budget by far: agents stalled it")
		}
	})
}

// addrListener is a listener that only has an address.
type addrListener struct {
	net.Listener
	addr net.Addr
}

func (l addrListener) Addr() net.Addr { return l.addr }

// TestOperatorOpenOnlyOnLoopback: operator_open_loopback opens the door
// without a key on a loopback address only; a door nobody could use is
// refused at start.
func TestOperatorOpenOnlyOnLoopback(t *testing.T) {
	loop := addrListener{addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9090}}
	other := addrListener{addr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 9090}}
	for _, tc := range []struct {
		rule       string
		open, keys bool
		ln         net.Listener
		wantOpen   bool
		wantErr    bool
	}{
		{"open on loopback needs no key", true, false, loop, true, false},
		{"open is ignored elsewhere, and without keys the door is refused", true, false, other, false, true},
		{"keys alone: a keyed door", false, true, other, false, false},
		{"neither: refused", false, false, loop, false, true},
	} {
		cfg := &Config{APIKeys: map[string]string{"k": "u"}, OperatorOpenLoopback: tc.open}
		if tc.keys {
			cfg.OperatorKeys = map[string]string{"op-key-0123456789": "prom"}
		}
		p := mustNew(t, cfg)
		if got := p.OperatorOpen(tc.ln); got != tc.wantOpen {
			t.Errorf("%s: open %v", tc.rule, got)
		}
		if err := p.CheckOperator(tc.ln); (err != nil) != tc.wantErr {
			t.Errorf("%s: check %v", tc.rule, err)
		}
	}
}
