package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tensorlake/tl-agent/uplink"
)

// Reconnect back-off: the first retry comes well under a second (a proxy
// restart should cost users little), doubling to a cap of a few seconds so
// a long outage is neither hammered nor waited out for minutes.
const (
	backoffMin = 200 * time.Millisecond
	backoffMax = 5 * time.Second
	// handshakeTimeout bounds dial plus handshake; a proxy that accepts and
	// says nothing must not wedge the loop.
	handshakeTimeout = 10 * time.Second
)

// backoff is capped exponential back-off with full jitter in [d/2, d].
type backoff struct{ next time.Duration }

func (b *backoff) reset() { b.next = 0 }

func (b *backoff) wait() time.Duration {
	if b.next == 0 {
		b.next = backoffMin
	} else {
		b.next = min(b.next*2, backoffMax)
	}
	return b.next/2 + rand.N(b.next/2+1)
}

// linkState is what the operator sees of the uplink.
type linkState struct {
	mu         sync.Mutex
	state      string // connecting, connected, refused, disconnected
	since      time.Time
	reconnects int
	lastErr    string
	remote     string
}

func (l *linkState) set(state, remote string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if state == "connected" {
		if !l.since.IsZero() {
			l.reconnects++
		}
		l.since = time.Now()
		l.remote = remote
	}
	l.state = state
	if err != nil {
		l.lastErr = err.Error()
	}
}

func (l *linkState) snapshot() map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := map[string]any{"state": l.state, "reconnects": l.reconnects, "last_error": l.lastErr, "remote": l.remote}
	if !l.since.IsZero() {
		m["connected_since"] = l.since.UTC().Format(time.RFC3339)
	}
	return m
}

// dialLoop keeps one uplink to the proxy until ctx ends.
func (a *Agent) dialLoop(ctx context.Context) {
	var bo backoff
	tlsConf, err := a.tlsConfig()
	if err != nil {
		// A broken CA file is a configuration error that retrying will not
		// fix; still keep serving nothing rather than exit: PID 1 stays up.
		a.log.Error().Err(err).Msg("uplink TLS configuration")
		<-ctx.Done()
		return
	}
	for ctx.Err() == nil {
		a.link.set("connecting", "", nil)
		conn, err := a.dial(ctx, tlsConf)
		if err == nil {
			var up bool
			up, err = a.runUplink(ctx, conn)
			if up {
				bo.reset()
			}
		}
		if ctx.Err() != nil {
			return
		}
		var ref *uplink.RefusedError
		if errors.As(err, &ref) {
			a.link.set("refused", "", err)
			a.log.Error().Str("code", ref.Code).Str("reason", ref.Msg).Msg("proxy refused uplink")
		} else {
			a.link.set("disconnected", "", err)
			a.log.Warn().Err(err).Msg("uplink down")
		}
		d := bo.wait()
		a.log.Debug().Dur("retry_in", d).Msg("uplink retry")
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

func (a *Agent) dial(ctx context.Context, tlsConf *tls.Config) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 5 * time.Second}
	c, err := d.DialContext(dctx, "tcp", a.cfg.ProxyAddr)
	if err != nil {
		return nil, err
	}
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(true) // keystrokes must not wait for Nagle
	}
	if tlsConf == nil {
		return c, nil
	}
	tc := tls.Client(c, tlsConf)
	if err := tc.HandshakeContext(dctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	return tc, nil
}

func (a *Agent) tlsConfig() (*tls.Config, error) {
	if !a.cfg.TLS {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: a.cfg.ServerName}
	if conf.ServerName == "" {
		host, _, _ := net.SplitHostPort(a.cfg.ProxyAddr)
		conf.ServerName = host
	}
	if a.cfg.CAFile != "" {
		pem, err := os.ReadFile(a.cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no certificates", a.cfg.CAFile)
		}
		conf.RootCAs = pool
	}
	return conf, nil
}

// runUplink does the handshake on conn and serves its streams until the
// link dies. up reports whether the handshake succeeded.
func (a *Agent) runUplink(ctx context.Context, conn net.Conn) (up bool, err error) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := uplink.WriteHello(conn, uplink.Hello{SandboxID: a.cfg.SandboxID, Token: a.cfg.Token, AgentVersion: a.version}); err != nil {
		return false, fmt.Errorf("send hello: %w", err)
	}
	if err := uplink.ReadWelcome(conn); err != nil {
		return false, err
	}
	_ = conn.SetDeadline(time.Time{})
	// The proxy opens streams; to yamux the agent is the server side.
	sess, err := yamux.Server(uplink.Coalesce(conn), uplink.MuxConfig(a.log))
	if err != nil {
		return false, err
	}
	defer sess.Close()
	remote := conn.RemoteAddr().String()
	a.link.set("connected", remote, nil)
	a.log.Info().Str("remote", remote).Msg("uplink connected")
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	a.serveSession(ctx, sess)
	if ctx.Err() != nil {
		return true, ctx.Err()
	}
	return true, errors.New("uplink session closed")
}

// listenLoop accepts uplinks from a runtime that dials in (listen mode).
// Each accepted connection runs the same handshake as a dialed one.
func (a *Agent) listenLoop(ctx context.Context) error {
	ln, err := listen(a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", a.cfg.Listen, err)
	}
	a.log.Info().Str("addr", a.cfg.Listen).Msg("uplink listening")
	a.link.set("listening", "", nil)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.log.Warn().Err(err).Msg("uplink accept")
			time.Sleep(100 * time.Millisecond)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := a.runUplink(ctx, c)
			if ctx.Err() == nil {
				a.link.set("listening", "", err)
				a.log.Warn().Err(err).Msg("uplink down")
			}
		}()
	}
}

func listen(spec string) (net.Listener, error) {
	kind, addr, _ := strings.Cut(spec, ":")
	switch kind {
	case "unix":
		_ = os.Remove(addr) // a stale socket from a previous run
		ln, err := net.Listen("unix", addr)
		if err != nil {
			return nil, err
		}
		_ = os.Chmod(addr, 0o600)
		return ln, nil
	case "tcp":
		return net.Listen("tcp", addr)
	case "vsock":
		return listenVsock(addr)
	}
	return nil, fmt.Errorf("unknown listen kind %q", kind)
}
