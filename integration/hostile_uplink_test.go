package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/uplink"
)

// The hostile uplink suite: each test plays an attacker (or a faulty
// peer) against the real tl-agent or tl-proxy binary, speaking the wire
// protocol with the uplink package, and checks the door stays shut.

// fakeAgent is an agent written in the test: it authenticates with the
// uplink package and serves API streams with a canned answer.
type fakeAgent struct {
	conn net.Conn
	sess *yamux.Session
	next []byte // the link secret derived at its welcome
}

func dialFakeAgent(addr, id string, key []byte, link bool) (*fakeAgent, error) {
	f, err := dialFakeLink(addr, id, key, link, func(c net.Conn) net.Conn { return c })
	if err != nil {
		return nil, err
	}
	go f.serve()
	return f, nil
}

// dialFakeLink authenticates a fake agent and runs yamux over wrap(conn);
// the caller serves its streams.
func dialFakeLink(addr, id string, key []byte, link bool, wrap func(net.Conn) net.Conn) (*fakeAgent, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	next, err := uplink.AgentHandshake(c, uplink.AgentAuth{SandboxID: id, Key: key, Link: link, AgentVersion: "fake"})
	if err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	sess, err := yamux.Server(wrap(c), uplink.MuxConfig(zerolog.Nop()))
	if err != nil {
		c.Close()
		return nil, err
	}
	return &fakeAgent{conn: c, sess: sess, next: next}, nil
}

func (f *fakeAgent) Close() { f.sess.Close(); f.conn.Close() }

func (f *fakeAgent) serve() {
	for {
		st, err := f.sess.Accept()
		if err != nil {
			return
		}
		go func() {
			defer st.Close()
			if _, err := uplink.ReadHeader(st); err != nil {
				return
			}
			_ = uplink.WriteReply(st, uplink.StatusOK, "")
			br := bufio.NewReader(st)
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				body := `{"fake":true}`
				fmt.Fprintf(st, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			}
		}()
	}
}

// refusal returns the code of a refused handshake, or fails t.
func refusal(t *testing.T, err error) string {
	t.Helper()
	var ref *uplink.RefusedError
	if !errors.As(err, &ref) {
		t.Fatalf("want a refusal, got %v", err)
	}
	return ref.Code
}

// startListenAgent runs the real tl-agent in listen mode on a loopback TCP
// port with a token file, and returns the address and the token.
func startListenAgent(t *testing.T, id string) (addr, token string, log *syncBuffer) {
	token, file := tokenFile(t)
	addr = freeAddr(t)
	log = startBareAgent(t, Binaries(t), "--listen", "tcp:"+addr, "--sandbox-id", id, "--token-file", file, "--log-level", "debug")
	waitTCP(t, addr, 10*time.Second)
	return addr, token, log
}

// readRaw reads one handshake frame's JSON body (magic, version, u16 length).
func readRaw(r io.Reader) ([]byte, error) {
	var head [7]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, err
	}
	body := make([]byte, int(head[5])<<8|int(head[6]))
	_, err := io.ReadFull(r, body)
	return append(head[:], body...), err
}

func writeRaw(w io.Writer, version byte, body string) {
	buf := append([]byte("TLUP"), version, byte(len(body)>>8), byte(len(body)))
	_, _ = w.Write(append(buf, body...))
}

// TestListenModeStrangerGetsNothing replays the reported attack on the
// real agent in listen mode: connect, read the hello, claim a welcome,
// open an api stream. The stranger must see no token and get no stream.
// A connector that knows the token (the control) gets in.
func TestListenModeStrangerGetsNothing(t *testing.T) {
	addr, token, agentLog := startListenAgent(t, "lm-hostile")

	// 1. Yesterday's exploit: read hello, write welcome ok, open a stream.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	hello, err := readRaw(c)
	if err != nil {
		t.Fatalf("read hello: %v", err)
	}
	if bytes.Contains(hello, []byte(token)) || bytes.Contains(hello, []byte(`"token":`)) {
		t.Fatalf("the hello reveals the token: %s", hello)
	}
	writeRaw(c, 1, `{"ok":true,"version":1}`)
	sess, _ := yamux.Client(c, uplink.MuxConfig(zerolog.Nop()))
	if st, err := sess.OpenStream(); err == nil {
		_ = uplink.WriteHeader(st, uplink.Header{Kind: uplink.KindAPI})
		_ = st.SetDeadline(time.Now().Add(5 * time.Second))
		if err := uplink.ReadReply(st); err == nil {
			t.Fatal("the stranger's api stream was accepted")
		}
	}
	sess.Close()

	// 2. A stranger that plays the v2 challenge without the key gets a
	// refusal and no proof.
	c2, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := readRaw(c2); err != nil {
		t.Fatal(err)
	}
	writeRaw(c2, 2, fmt.Sprintf(`{"nonce":%q,"proof":%q}`, hex.EncodeToString(uplink.NewNonce()), hex.EncodeToString(uplink.NewNonce())))
	answer, err := readRaw(c2)
	if err != nil || !bytes.Contains(answer, []byte(uplink.CodeBadProof)) || bytes.Contains(answer, []byte(`"proof"`)) {
		t.Fatalf("answer to a false proof: %q, %v", answer, err)
	}
	if _, err := readRaw(c2); err == nil {
		t.Fatal("the agent kept talking after refusing the proof")
	}

	// 3. The control: a connector that knows the token is served.
	good, next := connectAsProxy(t, addr, "lm-hostile", token, nil)
	defer good.Close()
	st, err := good.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	_ = st.SetDeadline(time.Now().Add(10 * time.Second))
	if err := uplink.WriteHeader(st, uplink.Header{Kind: uplink.KindAPI}); err != nil {
		t.Fatal(err)
	}
	if err := uplink.ReadReply(st); err != nil {
		t.Fatalf("authenticated connector: %v\n%s", err, agentLog.String())
	}
	fmt.Fprintf(st, "GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(st), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("health through the authenticated link: %v %v", resp, err)
	}

	// 4. One live link at a time: a second authenticated connector
	// replaces the first. (The agent now asks for the link secret.)
	second, _ := connectAsProxy(t, addr, "lm-hostile", token, next)
	defer second.Close()
	select {
	case <-good.CloseChan():
	case <-time.After(10 * time.Second):
		t.Fatal("two authenticated links live at once")
	}
	if strings.Contains(agentLog.String(), token) {
		t.Fatal("the agent logged its token")
	}
}

// connectAsProxy dials a listen-mode agent and authenticates as the proxy
// with the token, or with the link secret when the agent asks for one it
// names. It returns the session and the next link secret.
func connectAsProxy(t *testing.T, addr, id, token string, link []byte) (*yamux.Session, []byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	h, err := uplink.ReadHello(c)
	if err != nil || h.SandboxID != id {
		t.Fatalf("hello %+v, %v", h, err)
	}
	key := []byte(token)
	if h.Key == uplink.KeyLink {
		if link == nil || h.KeyID != uplink.KeyID(link) {
			t.Fatalf("the agent asks for link secret %s", h.KeyID)
		}
		key = link
	}
	_, next, err := uplink.ProxyChallenge(c, h, key)
	if err != nil {
		t.Fatalf("challenge: %v", err)
	}
	if err := uplink.WriteWelcome(c, uplink.Welcome{OK: true}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Time{})
	sess, err := yamux.Client(c, uplink.MuxConfig(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	return sess, next
}

// TestListenUnixSocketPrivate: the listen-mode unix socket is 0600 from
// the moment it is reachable at its path.
func TestListenUnixSocketPrivate(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "up.sock")
	_, file := tokenFile(t)
	startBareAgent(t, Binaries(t), "--listen", "unix:"+sock, "--sandbox-id", "u", "--token-file", file)
	// Poll as fast as possible: any sighting must already be 0600.
	for i := 0; i < 20000; i++ {
		fi, err := os.Lstat(sock)
		if err == nil {
			if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
				t.Fatalf("socket seen with mode %v", fi.Mode())
			}
			return
		}
		if i%100 == 99 {
			time.Sleep(time.Millisecond)
		}
	}
	t.Fatal("socket never appeared")
}

// TestAgentDoesNotProveToStranger points the real agent at a fake proxy
// that does not know the token: the agent's hello holds no token, and it
// answers the false proof with a refusal instead of its own proof.
func TestAgentDoesNotProveToStranger(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	token, file := tokenFile(t)
	startBareAgent(t, Binaries(t), "--proxy", ln.Addr().String(), "--sandbox-id", "s1", "--token-file", file)
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	hello, err := readRaw(c)
	if err != nil || bytes.Contains(hello, []byte(token)) || !bytes.Contains(hello, []byte(`"version":2`)) {
		t.Fatalf("hello %q, %v", hello, err)
	}
	writeRaw(c, 2, fmt.Sprintf(`{"nonce":%q,"proof":%q}`, hex.EncodeToString(uplink.NewNonce()), hex.EncodeToString(uplink.NewNonce())))
	answer, err := readRaw(c)
	if err != nil || !bytes.Contains(answer, []byte(uplink.CodeBadProof)) || bytes.Contains(answer, []byte(`"proof"`)) {
		t.Fatalf("answer to a false proof: %q, %v", answer, err)
	}
}

// TestV1AgentStillConnects: an agent of the previous release (token in
// clear) still connects to the new proxy, and the proxy logs the link at
// warn; a wrong token and an unknown id get one and the same answer.
func TestV1AgentStillConnects(t *testing.T) {
	s := Start(t, Options{NoAgent: true})
	v1 := func(id, token string) (net.Conn, error) {
		c, err := net.DialTimeout("tcp", s.UplinkAddr, 5*time.Second)
		if err != nil {
			return nil, err
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_ = uplink.WriteHelloV1(c, uplink.Hello{SandboxID: id, Token: token, AgentVersion: "old"})
		return c, uplink.ReadWelcome(c)
	}
	_, errUnknown := v1("no-such-sandbox", s.Token)
	_, errWrong := v1(s.SandboxID, strings.Repeat("0", 64))
	if errUnknown == nil || errWrong == nil || errUnknown.Error() != errWrong.Error() {
		t.Fatalf("unknown id: %v; wrong token: %v (want the same refusal)", errUnknown, errWrong)
	}
	c, err := v1(s.SandboxID, s.Token)
	if err != nil {
		t.Fatalf("v1 agent: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Time{})
	sess, _ := yamux.Server(c, uplink.MuxConfig(zerolog.Nop()))
	defer sess.Close()
	s.WaitConnected(10 * time.Second)
	if sb := proxySandbox(t, s); !sb.Connected || sb.Protocol != uplink.VersionLegacy || sb.Resumed {
		t.Fatalf("the proxy lists the v1 link as %+v, want connected, protocol %d, not resumed", sb, uplink.VersionLegacy)
	}
	// The operator is warned of an agent that still speaks v1.
	if !strings.Contains(s.ProxyLog(), "protocol v1 uplink") {
		t.Fatalf("v1 link not logged:\n%s", tail(s.ProxyLog(), 20))
	}
}

// TestConcurrentHellos sends 16 hellos for one id at once, v1 and v2:
// at most one may pass (the registry's check and swap are one step).
func TestConcurrentHellos(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			s := Start(t, Options{NoAgent: true})
			const n = 16
			var wg sync.WaitGroup
			var mu sync.Mutex
			passed, refused := 0, 0
			start := make(chan struct{})
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					var err error
					if v == 1 {
						var c net.Conn
						c, err = net.DialTimeout("tcp", s.UplinkAddr, 5*time.Second)
						if err == nil {
							_ = c.SetDeadline(time.Now().Add(10 * time.Second))
							_ = uplink.WriteHelloV1(c, uplink.Hello{SandboxID: s.SandboxID, Token: s.Token})
							if err = uplink.ReadWelcome(c); err == nil {
								_ = c.SetDeadline(time.Time{})
								sess, _ := yamux.Server(c, uplink.MuxConfig(zerolog.Nop())) // answers pings
								t.Cleanup(func() { sess.Close() })
							}
						}
					} else {
						var f *fakeAgent
						if f, err = dialFakeAgent(s.UplinkAddr, s.SandboxID, []byte(s.Token), false); err == nil {
							t.Cleanup(f.Close)
						}
					}
					mu.Lock()
					defer mu.Unlock()
					if err == nil {
						passed++
					} else if errors.As(err, new(*uplink.RefusedError)) {
						refused++
					} else {
						t.Logf("a hello failed without a refusal (a loaded machine): %v", err)
					}
				}()
			}
			close(start)
			wg.Wait()
			t.Logf("v%d: %d passed, %d refused of %d", v, passed, refused, n)
			// The rule: exactly one passes. The rest are refused (or, on a
			// loaded machine, fail otherwise: logged above).
			if passed != 1 || refused < n/2 {
				t.Fatalf("%d of %d concurrent hellos passed, %d refused: want exactly 1 passed, the rest refused", passed, n, refused)
			}
		})
	}
}

// TestImpostorWithBaseToken: code inside the sandbox can read the base
// token. While the sandbox is live, or within BaseTokenQuiet of its last
// link, a registration that proves only the base token is refused and
// logged; the agent itself resumes with its link secret meanwhile; after
// the window a rebooted agent (base token) gets in.
func TestImpostorWithBaseToken(t *testing.T) {
	s := Start(t, Options{NoAgent: true})
	token := []byte(s.Token)
	real, err := dialFakeAgent(s.UplinkAddr, s.SandboxID, token, false)
	if err != nil {
		t.Fatalf("first boot: %v", err)
	}
	if _, err := dialFakeAgent(s.UplinkAddr, s.SandboxID, token, false); refusal(t, err) != uplink.CodeDuplicate {
		t.Fatalf("impostor while live: %v", err)
	}
	// The link drops; the real agent resumes with its link secret at once.
	real.Close()
	time.Sleep(200 * time.Millisecond)
	if _, err := dialFakeAgent(s.UplinkAddr, s.SandboxID, token, false); refusal(t, err) != uplink.CodeDuplicate {
		t.Fatalf("impostor right after the link ended: %v", err)
	}
	resumed, err := dialFakeAgent(s.UplinkAddr, s.SandboxID, real.next, true)
	if err != nil {
		t.Fatalf("resume with the link secret: %v\n%s", err, tail(s.ProxyLog(), 20))
	}
	// The secret rotated: the old one no longer opens the door.
	resumed.Close()
	time.Sleep(200 * time.Millisecond)
	if _, err := dialFakeAgent(s.UplinkAddr, s.SandboxID, real.next, true); refusal(t, err) != uplink.CodeResumeRefused {
		t.Fatalf("stale link secret: %v", err)
	}
	// A v1 hello is a downgrade once the sandbox has spoken v2.
	c, _ := net.DialTimeout("tcp", s.UplinkAddr, 5*time.Second)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_ = uplink.WriteHelloV1(c, uplink.Hello{SandboxID: s.SandboxID, Token: s.Token})
	if err := uplink.ReadWelcome(c); err == nil {
		t.Fatal("v1 downgrade accepted")
	}
	c.Close()
	if !strings.Contains(s.ProxyLog(), "registration with the base token is refused") || !strings.Contains(s.ProxyLog(), "ago: the base token is accepted again") {
		t.Fatalf("refusals not logged:\n%s", tail(s.ProxyLog(), 30))
	}
	// A genuine reboot after the window works.
	time.Sleep(proxyQuiet + time.Second)
	f, err := dialFakeAgent(s.UplinkAddr, s.SandboxID, token, false)
	if err != nil {
		t.Fatalf("reboot after the window: %v", err)
	}
	f.Close()
}

// TestPauseRedialsWithLinkSecret stops the real agent (SIGSTOP) for 4 s:
// on SIGCONT its pause detector redials at once, and the proxy, which
// still holds the old link, accepts the resume (the link secret), where a
// base-token registration would be refused.
func TestPauseRedialsWithLinkSecret(t *testing.T) {
	s := Start(t, Options{NoSandbox: true})
	s.JSON("GET", "/api/v1/health", nil, 200, nil)
	before := agentState(t, s).Uplink.Reconnects
	if err := s.SignalAgent(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second)
	_ = s.SignalAgent(syscall.SIGCONT)
	deadline := time.Now().Add(10 * time.Second)
	up := agentState(t, s).Uplink
	for (up.Reconnects == before || up.State != "connected") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		up = agentState(t, s).Uplink
	}
	if up.Reconnects == before || up.State != "connected" {
		t.Fatalf("no redial after the pause: uplink %+v, reconnects were %d\n%s", up, before, tail(s.AgentLog(), 30))
	}
	// The cause: the pause detector, not a keepalive timeout (the only
	// place the operator learns why is the log).
	if !strings.Contains(s.AgentLog(), "sandbox was paused: redialing the uplink") {
		t.Fatalf("the redial was not the pause detector's:\n%s", tail(s.AgentLog(), 30))
	}
	if sb := proxySandbox(t, s); !sb.Connected || !sb.Resumed {
		t.Fatalf("the agent did not resume with its link secret: the proxy lists %+v\n%s", sb, tail(s.ProxyLog(), 30))
	}
	s.JSON("GET", "/api/v1/health", nil, 200, nil)
}

// TestRequestWaitsForReconnectingAgent: a request for a known sandbox with
// no link waits up to proxy.LinkWait (5 s) for the agent instead of an
// immediate 503.
func TestRequestWaitsForReconnectingAgent(t *testing.T) {
	s := Start(t, Options{NoAgent: true})
	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := http.DefaultClient.Do(s.Request(ctx, "GET", "/api/v1/health", nil))
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		done <- result{code: resp.StatusCode, body: string(b)}
	}()
	time.Sleep(1500 * time.Millisecond)
	f, err := dialFakeAgent(s.UplinkAddr, s.SandboxID, []byte(s.Token), false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := <-done
	if r.err != nil || r.code != 200 || !strings.Contains(r.body, "fake") {
		t.Fatalf("request during reconnect: %d %q %v", r.code, r.body, r.err)
	}
}

// TestAgentStreamFloodBounded: an authenticated agent (code in the
// sandbox with a stolen token, say) opens 256 streams and sends 256 KiB
// on each. The proxy must not buffer them: its RSS may grow by at most
// 32 MiB (before the fix: 7 → 161 MB), and it drops the link.
func TestAgentStreamFloodBounded(t *testing.T) {
	s := Start(t, Options{NoAgent: true})
	pid := s.ProxyPid()
	f, err := dialFakeAgent(s.UplinkAddr, s.SandboxID, []byte(s.Token), false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := vmKB(t, pid, "VmRSS")
	chunk := bytes.Repeat([]byte("x"), 256<<10)
	var wg sync.WaitGroup
	for i := 0; i < 256; i++ {
		st, err := f.sess.OpenStream()
		if err != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = st.SetWriteDeadline(time.Now().Add(10 * time.Second))
			_, _ = st.Write(chunk)
		}()
	}
	wg.Wait()
	time.Sleep(500 * time.Millisecond)
	after := vmKB(t, pid, "VmRSS")
	t.Logf("proxy RSS %d KiB -> %d KiB (+%d KiB)", before, after, after-before)
	if after-before > 32<<10 {
		t.Fatalf("proxy RSS grew by %d KiB under an agent-opened stream flood (bound 32 MiB)", after-before)
	}
	if !strings.Contains(s.ProxyLog(), "the agent opened a stream: refused") {
		t.Fatalf("flood not logged:\n%s", tail(s.ProxyLog(), 20))
	}
}

// TestAPIStreamCap: above --uplink-max-api-streams concurrent API streams
// the agent refuses the next with a clear reason; when they end, requests
// are served again.
func TestAPIStreamCap(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{AgentArgs: []string{"--uplink-max-api-streams", "4"}})
	// Four `run`s streaming their events hold four API streams.
	var held []*http.Response
	for i := 0; i < 4; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		req := s.Request(ctx, "POST", "/api/v1/processes/run", strings.NewReader(`{"command":"sleep","args":["30"]}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("run %d: %v %v", i, resp, err)
		}
		held = append(held, resp)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(s.Request(ctx, "GET", "/api/v1/health", nil))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "too many concurrent API streams on this uplink (max 4)") {
		t.Fatalf("fifth API stream: %d %s", resp.StatusCode, body)
	}
	t.Logf("fifth API stream: %d %s", resp.StatusCode, body)
	for _, r := range held {
		r.Body.Close()
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := http.DefaultClient.Do(s.Request(ctx, "GET", "/api/v1/health", nil))
		cancel()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("API streams not released after their clients left")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// proxyQuiet is proxy.BaseTokenQuiet (the integration package drives the
// binaries and does not import the proxy).
const proxyQuiet = 20 * time.Second

// TestV2UnknownIDLooksLikeWrongToken: without the secret, a v2 peer cannot
// tell an unknown id from a known one: the challenge has the same shape
// and the refusal of a false proof is byte for byte the same.
func TestV2UnknownIDLooksLikeWrongToken(t *testing.T) {
	s := Start(t, Options{NoAgent: true})
	probe := func(id string) (challengeLen int, refusal []byte) {
		c, err := net.DialTimeout("tcp", s.UplinkAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		writeRaw(c, 2, fmt.Sprintf(`{"version":2,"sandbox_id":%q,"nonce":%q,"key":"token"}`, id, hex.EncodeToString(uplink.NewNonce())))
		ch, err := readRaw(c)
		if err != nil {
			t.Fatalf("%s: challenge: %v", id, err)
		}
		writeRaw(c, 2, fmt.Sprintf(`{"proof":%q}`, hex.EncodeToString(uplink.NewNonce())))
		ref, err := readRaw(c)
		if err != nil {
			t.Fatalf("%s: refusal: %v", id, err)
		}
		return len(ch), ref
	}
	n1, r1 := probe(s.SandboxID)
	n2, r2 := probe("no-such-sandbox")
	if n1 != n2 {
		t.Fatalf("challenge sizes differ: %d, %d", n1, n2)
	}
	if !bytes.Equal(r1, r2) || !bytes.Contains(r1, []byte(uplink.CodeBadToken)) {
		t.Fatalf("refusals differ:\n%s\n%s", r1, r2)
	}
}

// TestRebootAfterOrderlyShutdown: an agent that shuts down in order says
// goodbye, so its next boot (base token) connects at once instead of
// waiting out the base token's quiet window.
func TestRebootAfterOrderlyShutdown(t *testing.T) {
	s := Start(t, Options{NoSandbox: true})
	if err := s.SignalAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s.WaitAgentExit(20 * time.Second)
	start := time.Now()
	s.StartAgent()
	s.WaitConnected(proxyQuiet / 2)
	t.Logf("rebooted agent connected after %v", time.Since(start))
	if !strings.Contains(s.ProxyLog(), "the agent said goodbye") {
		t.Fatalf("no goodbye logged:\n%s", tail(s.ProxyLog(), 20))
	}
}
