package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/uplink"
)

// scrapeOperator GETs the operator door's /metrics with key ("" for
// none) and returns the status and at most 16 MiB of the body.
func scrapeOperator(t *testing.T, addr, key string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/metrics", nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, string(body)
}

// hasLine reports whether the exposition has a sample line starting with
// prefix.
func hasLine(body, prefix string) bool {
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

// TestOperatorDoor: the operator door wants its own key, serves the
// proxy's and the agent's metrics (the sandbox cgroup's figures too, on a
// host where the agent sees its cgroup), and the users' front door cannot
// reach the agent's metrics; the control socket serves them to
// `tl-agent metrics`.
func TestOperatorDoor(t *testing.T) {
	opAddr, opKey := freeAddr(t), "tl_op_"+randHex(16)
	s := Start(t, Options{NoSandbox: true,
		ProxyArgs:   []string{"--operator-addr", opAddr},
		ProxyConfig: func(cfg map[string]any) { cfg["operator_keys"] = map[string]string{opKey: "prometheus"} }})
	rule(t, s, "no key is refused", func(t *testing.T) {
		if code, body := scrapeOperator(t, opAddr, ""); code != http.StatusUnauthorized || strings.Contains(body, "tl_") {
			t.Fatalf("no key: %d %q", code, body)
		}
	})
	rule(t, s, "a user's API key is not an operator key", func(t *testing.T) {
		if code, _ := scrapeOperator(t, opAddr, s.APIKey); code != http.StatusUnauthorized {
			t.Fatalf("API key at the operator door: %d, want 401", code)
		}
	})
	rule(t, s, "the operator key gets the proxy's and the agent's metrics", func(t *testing.T) {
		code, body := scrapeOperator(t, opAddr, opKey)
		sb := `{sandbox="` + s.SandboxID + `"}`
		for _, want := range []string{"tl_proxy_sandboxes_connected 1", `tl_proxy_agent_up` + sb + ` 1`, "tl_agent_uplink_up" + sb + " 1",
			"tl_agent_cgroup_memory_bytes" + sb, "tl_agent_cgroup_cpu_seconds_total" + sb, "tl_agent_goroutines" + sb} {
			if code != 200 || !hasLine(body, want) {
				t.Errorf("scrape (%d) lacks %q:\n%s", code, want, tail(body, 40))
			}
		}
	})
	rule(t, s, "the users' front door does not reach the agent's metrics", func(t *testing.T) {
		resp := s.Do("GET", "/metrics", nil)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || strings.Contains(string(body), "tl_agent_") {
			t.Fatalf("front door GET /metrics: %d %q", resp.StatusCode, body)
		}
	})
	rule(t, s, "tl-agent status prints the same figures as text", func(t *testing.T) {
		out, err := exec.Command(filepath.Join(s.bin, "tl-agent"), "status", "--socket", s.ControlSocket()).Output()
		for _, want := range []string{"\nuplink:\n", "\n  connects:          1\n", "\ncgroup:\n", "\nstreams:\n  api:\n"} {
			if err != nil || !strings.Contains(string(out), want) {
				t.Errorf("tl-agent status lacks %q: %v\n%s", want, err, out)
			}
		}
	})
	rule(t, s, "tl-agent metrics prints the agent's metrics from the control socket", func(t *testing.T) {
		out, err := exec.Command(filepath.Join(s.bin, "tl-agent"), "metrics", "--socket", s.ControlSocket()).Output()
		if err != nil || !hasLine(string(out), "tl_agent_uplink_up 1") || !hasLine(string(out), "tl_agent_uplink_connects_total 1") {
			t.Fatalf("tl-agent metrics: %v\n%s", err, tail(string(out), 20))
		}
	})
}

// metricsAgent is a hostile agent written in the test: it authenticates
// with the sandbox's token and answers metrics streams with answer(n),
// n counting the streams from 0.
type metricsAgent struct {
	sess   *yamux.Session
	conn   net.Conn
	n      atomic.Int32
	answer func(n int, w io.Writer)
}

func dialMetricsAgent(t *testing.T, s *System, answer func(n int, w io.Writer)) *metricsAgent {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.UplinkAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := uplink.AgentHandshake(c, uplink.AgentAuth{SandboxID: s.SandboxID, Key: []byte(s.Token), AgentVersion: "hostile"}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Time{})
	sess, err := yamux.Server(c, uplink.MuxConfig(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	a := &metricsAgent{sess: sess, conn: c, answer: answer}
	go func() {
		for {
			st, err := sess.Accept()
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				h, err := uplink.ReadHeader(st)
				if err != nil || h.Kind != uplink.KindMetrics {
					return
				}
				_ = uplink.WriteReply(st, uplink.StatusOK, "")
				a.answer(int(a.n.Add(1)-1), st)
			}()
		}
	}()
	t.Cleanup(func() { sess.Close(); c.Close() })
	return a
}

// TestOperatorDoorHostileAgent: an agent (a sandbox's root may replace
// it) that answers the metrics fetch slowly, hugely or with forged series
// neither stalls nor bloats the scrape, nor speaks for anyone else; the
// proxy's own metrics are served every time.
func TestOperatorDoorHostileAgent(t *testing.T) {
	opAddr := freeAddr(t)
	s := Start(t, Options{NoAgent: true,
		ProxyArgs:   []string{"--operator-addr", opAddr},
		ProxyConfig: func(cfg map[string]any) { cfg["operator_open_loopback"] = true }})
	modes := []func(w io.Writer){
		// slow: one valid line, then a trickle that never ends
		func(w io.Writer) {
			fmt.Fprintf(w, "# TYPE tl_agent_goroutines gauge\ntl_agent_goroutines 1\n")
			for range 120 {
				if _, err := io.WriteString(w, "# still here\n"); err != nil {
					return
				}
				time.Sleep(500 * time.Millisecond)
			}
		},
		// huge: 64 MiB of well-formed series, as fast as the proxy reads
		func(w io.Writer) {
			bw := bufio.NewWriter(w)
			fmt.Fprintf(bw, "# TYPE tl_agent_streams_open gauge\n")
			for i := 0; i < 2<<20; i++ {
				if _, err := fmt.Fprintf(bw, "tl_agent_streams_open{kind=\"k%09d\"} 1\n", i); err != nil {
					return
				}
			}
			_ = bw.Flush()
		},
		// forged: another sandbox's label, an undeclared family, the
		// proxy's own family, and one honest series
		func(w io.Writer) {
			io.WriteString(w, "# TYPE tl_agent_uplink_up gauge\ntl_agent_uplink_up{sandbox=\"victim\"} 0\n"+
				"# TYPE tl_agent_goroutines gauge\ntl_agent_goroutines 5\n"+
				"# TYPE evil_total counter\nevil_total 1\n"+
				"# TYPE tl_proxy_sandboxes_known gauge\ntl_proxy_sandboxes_known 999\n"+
				"# TYPE tl_proxy_agent_up gauge\ntl_proxy_agent_up{sandbox=\"victim\"} 1\n")
		},
	}
	dialMetricsAgent(t, s, func(n int, w io.Writer) { modes[n%len(modes)](w) })
	s.WaitConnected(10 * time.Second)
	sb := `{sandbox="` + s.SandboxID + `"}`
	// The bound checked: a scrape ends within the scrape budget (10 s,
	// proxy.ScrapeBudget) plus margin, where the slow agent alone would
	// hold it a minute.
	const bound = 20 * time.Second
	scrape := func(t *testing.T) string {
		start := time.Now()
		code, body := scrapeOperator(t, opAddr, "")
		if code != 200 || !hasLine(body, "tl_proxy_sandboxes_known 1") {
			t.Fatalf("scrape %d lacks the proxy's own metrics:\n%s", code, tail(body, 20))
		}
		if took := time.Since(start); took > bound {
			t.Fatalf("the scrape took %v: the agent stalled it", took)
		}
		return body
	}
	rule(t, s, "a slow agent is cut at its timeout and reported down", func(t *testing.T) {
		body := scrape(t)
		if !hasLine(body, "tl_proxy_agent_up"+sb+" 0") || hasLine(body, "tl_agent_goroutines") ||
			!hasLine(body, `tl_proxy_agent_scrape_errors_total{reason="timeout"} 1`) {
			t.Fatalf("slow agent:\n%s", grepLines(body, "tl_"))
		}
	})
	rule(t, s, "a huge answer is refused whole, not passed on", func(t *testing.T) {
		body := scrape(t)
		if len(body) > 1<<20 || hasLine(body, "tl_agent_streams_open") || !hasLine(body, "tl_proxy_agent_up"+sb+" 0") ||
			!hasLine(body, `tl_proxy_agent_scrape_errors_total{reason="too_large"} 1`) {
			t.Fatalf("huge agent: %d bytes:\n%s", len(body), grepLines(body, "tl_"))
		}
	})
	rule(t, s, "forged series are dropped and the honest one is labelled with its sandbox", func(t *testing.T) {
		body := scrape(t)
		if !hasLine(body, "tl_agent_goroutines"+sb+" 5") || !hasLine(body, "tl_proxy_agent_up"+sb+" 1") {
			t.Fatalf("the honest series is missing:\n%s", grepLines(body, "tl_"))
		}
		for _, bad := range []string{"victim", "evil_total", "tl_proxy_sandboxes_known 999", "tl_agent_uplink_up"} {
			if strings.Contains(body, bad) {
				t.Errorf("forged %q reached the scrape:\n%s", bad, grepLines(body, "tl_"))
			}
		}
	})
}

// grepLines is the sample lines of body that contain sub (for failure
// messages: the whole scrape is long).
func grepLines(body, sub string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
