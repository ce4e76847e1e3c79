package proxy

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/uplink"
)

// TestLifecycleDoorUntrustedAgent: the operator door passes a lifecycle
// answer through only when it is one: an agent (a sandbox's root may
// replace it) that answers junk, too much or a status out of range is a
// 502, never a crash or a forged success; a well-formed answer passes.
func TestLifecycleDoorUntrustedAgent(t *testing.T) {
	for name, c := range map[string]struct {
		answer string
		status int
	}{
		"junk":         {"not json", http.StatusBadGateway},
		"oversized":    {`{"status":200,"body":"` + strings.Repeat("x", uplink.MaxLifecycleBody) + `"}`, http.StatusBadGateway},
		"status range": {`{"status":999,"body":{}}`, http.StatusBadGateway},
		"no body":      {`{"status":200}`, http.StatusBadGateway},
		"an answer":    {`{"status":409,"body":{"error":"busy","code":"BUSY"}}`, http.StatusConflict},
	} {
		t.Run(name, func(t *testing.T) {
			p := mustNew(t, &Config{APIKeys: map[string]string{"k": "n"}, Sandboxes: map[string]SandboxConfig{"sbx": {Token: "0123456789abcdef"}}})
			proxyEnd, agentEnd := net.Pipe()
			cs, _ := yamux.Client(proxyEnd, uplink.MuxConfig(zerolog.Nop()))
			ss, _ := yamux.Server(agentEnd, uplink.MuxConfig(zerolog.Nop()))
			defer cs.Close()
			defer ss.Close()
			go func() {
				for {
					st, err := ss.AcceptStream()
					if err != nil {
						return
					}
					go func() {
						defer st.Close()
						if h, err := uplink.ReadHeader(st); err != nil || h.Kind != uplink.KindLifecycle {
							return
						}
						_ = uplink.WriteReply(st, uplink.StatusOK, "")
						_, _ = st.Write([]byte(c.answer))
					}()
				}
			}()
			if err := p.reg.registerV2(&Link{ID: "sbx", sess: cs, Protocol: uplink.Version}, false, true, []byte("0123456789abcdef"), []byte("secret")); err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			p.OperatorHandler(true).ServeHTTP(rec, httptest.NewRequest("POST", "/sandboxes/sbx/prepare", strings.NewReader("{}")))
			if rec.Code != c.status {
				t.Fatalf("answer %.40q: door said %d %s, want %d", c.answer, rec.Code, rec.Body.String(), c.status)
			}
		})
	}
}
