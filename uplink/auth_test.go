package uplink

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// runPair runs the agent's side against the proxy's over a pipe; the
// proxy side proves with proxyKey and welcomes on success.
func runPair(t *testing.T, agent AgentAuth, proxyKey []byte) (agentNext, proxyNext []byte, agentErr, proxyErr error) {
	t.Helper()
	a, p := net.Pipe()
	defer a.Close()
	defer p.Close()
	_ = a.SetDeadline(time.Now().Add(5 * time.Second))
	_ = p.SetDeadline(time.Now().Add(5 * time.Second))
	done := make(chan struct{})
	go func() {
		defer close(done)
		h, err := ReadHello(p)
		if err != nil {
			proxyErr = err
			return
		}
		if h.Token != "" || h.Version != Version {
			proxyErr = errors.New("v2 hello carries a token or the wrong version")
			return
		}
		_, proxyNext, proxyErr = ProxyChallenge(p, h, proxyKey)
		if proxyErr == nil {
			proxyErr = WriteWelcome(p, Welcome{OK: true})
		}
		p.Close() // an agent waiting for a welcome that will not come
	}()
	agentNext, agentErr = AgentHandshake(a, agent)
	a.Close()
	<-done
	return
}

func TestMutualProof(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	an, pn, aerr, perr := runPair(t, AgentAuth{SandboxID: "sbx", Key: key, AgentVersion: "t"}, key)
	if aerr != nil || perr != nil || !bytes.Equal(an, pn) || len(an) != ProofSize {
		t.Fatalf("agent %v, proxy %v, next equal %v", aerr, perr, bytes.Equal(an, pn))
	}
	if bytes.Equal(an, key) {
		t.Fatal("the link secret is the token")
	}
	// Each handshake derives another secret (fresh nonces).
	an2, _, _, _ := runPair(t, AgentAuth{SandboxID: "sbx", Key: key}, key)
	if bytes.Equal(an, an2) {
		t.Fatal("two handshakes derived one secret")
	}
}

// TestProxyWithoutKeyGetsNoProof: a peer that does not know the key gets a
// refusal and no agent proof (the agent proves nothing to a stranger).
func TestProxyWithoutKeyGetsNoProof(t *testing.T) {
	_, pn, aerr, perr := runPair(t, AgentAuth{SandboxID: "sbx", Key: []byte("right-key-right-key")}, []byte("wrong-key-wrong-key"))
	var ref *RefusedError
	if !errors.As(aerr, &ref) || !errors.Is(aerr, ErrPeerProof) {
		t.Fatalf("agent: %v", aerr)
	}
	if !errors.As(perr, &ref) || ref.Code != CodeBadProof || pn != nil {
		t.Fatalf("proxy: %v", perr)
	}
}

// TestAgentWithoutKeyRefused: the proxy refuses a wrong agent proof with
// the one answer for unknown ids and wrong secrets.
func TestAgentWithoutKeyRefused(t *testing.T) {
	a, p := net.Pipe()
	defer a.Close()
	defer p.Close()
	go func() {
		h, _ := ReadHello(p)
		_, _, _ = ProxyChallenge(p, h, []byte("the-key-the-key"))
	}()
	na := NewNonce()
	_ = writeFrame(a, Hello{Version: Version, SandboxID: "sbx", Nonce: hex.EncodeToString(na), Key: KeyToken})
	var ch Challenge
	if _, err := readFrame(a, &ch); err != nil {
		t.Fatal(err)
	}
	// Reflection: answer with the proxy's own proof. Labels differ, so no.
	_ = writeFrame(a, Proof{Proof: ch.Proof})
	err := ReadWelcome(a)
	var ref *RefusedError
	if !errors.As(err, &ref) || ref.Code != CodeBadToken || ref.Msg != BadCredentials {
		t.Fatalf("reflected proof: %v", err)
	}
}

func TestV2HelloValidation(t *testing.T) {
	n := strings.Repeat("ab", NonceSize)
	bad := []Hello{
		{SandboxID: "s", Nonce: "short", Key: KeyToken},
		{SandboxID: "s", Nonce: n, Key: "other"},
		{SandboxID: "s", Nonce: n, Key: KeyToken, Token: "secret"},
		{SandboxID: "s", Nonce: n, Key: KeyLink},
		{SandboxID: "s", Nonce: n, Key: KeyLink, KeyID: "zz"},
	}
	for _, h := range bad {
		h.Version = Version
		var buf bytes.Buffer
		_ = writeFrame(&buf, h)
		if _, err := ReadHello(&buf); err == nil {
			t.Errorf("%+v accepted", h)
		}
	}
}

// FuzzAgentHandshake feeds arbitrary proxy answers to the agent's side:
// it must fail cleanly, and never accept without the key's proof.
func FuzzAgentHandshake(f *testing.F) {
	var buf bytes.Buffer
	_ = writeFrame(&buf, Challenge{Nonce: strings.Repeat("00", NonceSize), Proof: strings.Repeat("00", ProofSize)})
	_ = WriteWelcome(&buf, Welcome{OK: true})
	f.Add(buf.Bytes())
	f.Add([]byte("TLUP\x02\x00\x02{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rw := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(data), io.Discard}
		if _, err := AgentHandshake(rw, AgentAuth{SandboxID: "s", Key: []byte("k")}); err == nil {
			t.Fatal("handshake passed without a proof")
		}
	})
}

// FuzzProxyChallenge feeds arbitrary agent proofs to the proxy's side.
func FuzzProxyChallenge(f *testing.F) {
	h := Hello{Version: Version, SandboxID: "s", Nonce: strings.Repeat("11", NonceSize), Key: KeyToken}
	var buf bytes.Buffer
	_ = writeFrame(&buf, Proof{Proof: strings.Repeat("00", ProofSize), AgentVersion: "x"})
	f.Add(buf.Bytes())
	f.Add([]byte("TLUP\x02\x00\x0c{\"code\":\"x\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rw := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(data), io.Discard}
		if _, _, err := ProxyChallenge(rw, h, []byte("k")); err == nil {
			t.Fatal("challenge passed without a proof")
		}
	})
}
