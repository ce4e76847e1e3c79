package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/internal/netx"
	"github.com/tensorlake/tl-agent/internal/relay"
	"github.com/tensorlake/tl-agent/uplink"
)

// The SSH front door: `ssh <sandbox>@proxy` (or `<port>-<sandbox>@proxy`).
// Users authenticate with a key from the authorized keys file (sshkeys.go).
// The proxy serves sftp and -L/-D to the sandbox's loopback with uplink
// streams of their own; for anything else it opens an uplink stream to the
// sandbox, speaks SSH to the agent's server over it (dialled on first
// need, sshagent.go), and relays the two connections (sshrelay.go).
// docs/ssh.md describes the key file, the user names and the refusals.

// sshCiphers replace x/crypto's defaults. OpenSSH clients prefer
// chacha20-poly1305, then AES-CTR (with an HMAC), then AES-GCM; in Go on
// CPUs with AES instructions GCM is the fastest by far (measured: 251 MB/s
// through the proxy with GCM against 197 with CTR+HMAC-SHA256 and about
// 200 with chacha20; docs/benchmarks.md), so only AES-GCM is offered:
// every OpenSSH since 6.2 and current PuTTY speak it.
var sshCiphers = []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM}

type sshFront struct {
	p      *Proxy
	keys   *keyRing
	signer gossh.Signer
	lim    SSHLimits

	keyChans     *quota // channels per key fingerprint
	keyUnstarted *quota // unstarted sessions per key fingerprint

	mu    sync.Mutex
	conns map[net.Conn]struct{} // guarded by mu
}

// serveSSHFront is Proxy.serveSSH: it serves the SSH front door on ln
// until ctx ends, then closes every connection it accepted.
func (p *Proxy) serveSSHFront(ctx context.Context, ln net.Listener) error {
	signer, err := loadHostKey(p.cfg.SSHHostKey)
	if err != nil {
		ln.Close()
		return err
	}
	f, err := newSSHFront(p, signer)
	if err != nil {
		ln.Close()
		return err
	}
	p.log.Info().Str("addr", ln.Addr().String()).Str("host_key", gossh.FingerprintSHA256(signer.PublicKey())).Msg("ssh front door listening")
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		f.mu.Lock()
		for c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
	})
	defer stop()
	// Temporary accept errors (EMFILE...) are retried for as long as the
	// proxy runs; caps in all and per source come from the limits.
	lim := &netx.Limiter{Total: p.cfg.Limits.SSHConns, PerSource: p.cfg.Limits.SSHConnsPerSource}
	for {
		c, err := netx.Accept(ctx, ln, p.log)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("ssh accept: %w", err)
		}
		release, ok := lim.Acquire(c.RemoteAddr())
		f.mu.Lock()
		if ctx.Err() != nil {
			f.mu.Unlock()
			c.Close()
			return nil
		}
		if !ok {
			f.mu.Unlock()
			lim.LogRefusal(p.log, c.RemoteAddr(), "ssh connection refused: at the connection limit")
			c.Close()
			if ok {
				release()
			}
			continue
		}
		f.conns[c] = struct{}{}
		f.mu.Unlock()
		p.track(func() {
			defer release()
			defer func() {
				f.mu.Lock()
				delete(f.conns, c)
				f.mu.Unlock()
				c.Close()
			}()
			f.serveConn(ctx, c)
		})
	}
}

func newSSHFront(p *Proxy, signer gossh.Signer) (*sshFront, error) {
	lim := p.cfg.SSHLimits
	if err := lim.validate(); err != nil {
		return nil, err
	}
	return &sshFront{p: p, keys: &keyRing{path: p.cfg.SSHAuthorizedKeys, log: p.log}, signer: signer, lim: lim,
		keyChans:     newQuota(lim.ChannelsPerKey),
		keyUnstarted: newQuota(lim.UnstartedPerKey),
		conns:        map[net.Conn]struct{}{}}, nil
}

// sshRoute is what a user name asks for.
type sshRoute struct {
	sandbox string
	port    int // 0: the agent's own SSH server
}

// parseSSHUser reads a user name: `<sandbox>`, or `<port>-<sandbox>` when
// it starts with digits and a dash (sandbox ids never do).
func parseSSHUser(name string) (sshRoute, error) {
	if name == "" {
		return sshRoute{}, errors.New("empty user name")
	}
	if digits, id, ok := strings.Cut(name, "-"); ok && digits != "" && strings.Trim(digits, "0123456789") == "" {
		port, err := strconv.Atoi(digits)
		if err != nil || port < 1 || port > 65535 {
			return sshRoute{}, fmt.Errorf("port %s out of range 1..65535", digits)
		}
		if !ValidSandboxID(id) {
			return sshRoute{}, fmt.Errorf("%q is not a sandbox id", id)
		}
		return sshRoute{sandbox: id, port: port}, nil
	}
	if !ValidSandboxID(name) {
		return sshRoute{}, fmt.Errorf("%q is not a sandbox id", name)
	}
	return sshRoute{sandbox: name}, nil
}

// refuse is an authentication failure whose message OpenSSH prints.
func refuse(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	return &gossh.BannerError{Err: errors.New(msg), Message: "tl-proxy: " + msg + "\n"}
}

// frontConn is what authentication learns about one user connection,
// and what it holds.
type frontConn struct {
	key   *sshKey
	fp    string // the signing key's SHA256 fingerprint: per-key quotas
	route sshRoute
	agent *agentLink // the connection to the sandbox, made on first need
	log   zerolog.Logger

	chans     *quota // channels the user has open
	unstarted *quota // of which sessions not yet started
}

func (f *sshFront) serveConn(ctx context.Context, c net.Conn) {
	log := f.p.log.With().Str("component", "sshfront").Str("remote", c.RemoteAddr().String()).Logger()
	// The deadline covers everything before a key has signed: a client
	// that only queries keys (or never finishes) is dropped at it.
	_ = c.SetDeadline(time.Now().Add(f.lim.handshakeTimeout()))
	st := &frontConn{chans: newQuota(f.lim.ChannelsPerConn), unstarted: newQuota(f.lim.UnstartedPerConn)}
	denied := false // a key or route was refused: the login's result if it fails
	cfg := &gossh.ServerConfig{
		PublicKeyCallback: func(meta gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
			err := f.authorize(st, meta.User(), key)
			denied = denied || err != nil
			return nil, err
		},
		VerifiedPublicKeyCallback: func(meta gossh.ConnMetadata, key gossh.PublicKey, perms *gossh.Permissions, _ string) (*gossh.Permissions, error) {
			// Authorize again with the key that signed, so st describes
			// it whatever other keys the client queried before.
			if err := f.authorize(st, meta.User(), key); err != nil {
				denied = true
				return nil, err
			}
			if err := f.linkSandbox(ctx, st, c.RemoteAddr().String()); err != nil {
				denied = true
				log.Info().Err(err).Str("user", meta.User()).Str("key", st.key.name).Msg("ssh refused")
				return nil, err
			}
			return perms, nil
		},
		ServerVersion: "SSH-2.0-tl-proxy",
		Config:        gossh.Config{Ciphers: sshCiphers},
	}
	cfg.AddHostKey(f.signer)
	conn, chans, reqs, err := gossh.NewServerConn(c, cfg)
	f.p.met.sshLogin(err, denied)
	if err != nil {
		if st.agent != nil {
			st.agent.close()
		}
		log.Debug().Err(err).Msg("ssh handshake failed")
		return
	}
	_ = c.SetDeadline(time.Time{})
	start := time.Now()
	log = log.With().Str("user", conn.User()).Str("key", st.key.name).Logger()
	st.log = log
	log.Info().Msg("ssh connected")
	var shortcut func(gossh.NewChannel) bool
	if st.route.port == 0 {
		shortcut = f.takeChannel(ctx, st, c.RemoteAddr().String())
	}
	userAdmit := func() (func(), string) {
		rel, full := takeBothWait(ctx, st.chans, f.keyChans, st.fp, f.lim.slotWait())
		if full != "" {
			log.Debug().Str("cap", full).Msg("ssh channel refused: at the channel limit")
			return nil, fmt.Sprintf("tl-proxy: too many channels open on this %s (limit %d)", full, f.lim.channelCap(full))
		}
		return rel, ""
	}
	bridge(sshEnd{conn: conn, chans: chans, reqs: reqs}, st.agent, shortcut, userAdmit, connAdmit(f.lim.ChannelsPerConn))
	log.Info().Dur("duration", time.Since(start)).Msg("ssh disconnected")
}

// authorize checks a key and the route it asks for. Every refusal says
// what the user can do about it.
func (f *sshFront) authorize(st *frontConn, user string, key gossh.PublicKey) error {
	k, err := f.keys.lookup(key)
	if err != nil {
		f.p.log.Error().Err(err).Msg("ssh keys file")
		return refuse("the proxy cannot read its users' keys file (%s); tl-proxy's log says why (\"ssh keys file\")", keysSetting)
	}
	if k == nil {
		// The config setting, not the file's path: clients that have not
		// logged in learn nothing of the server's layout, and the operator
		// knows where it points (make run prints it). The line to add is
		// the client's own public key.
		return refuse("key %s is not registered with this proxy; add this line to the users' keys file (%s):\n  %s",
			gossh.FingerprintSHA256(key), keysSetting, authorizedLine(key))
	}
	rt, err := parseSSHUser(user)
	if err != nil {
		return refuse("user name %q: %v; use <sandbox> or <port>-<sandbox>", user, err)
	}
	if !k.allows(rt.sandbox) {
		return refuse("sandbox %s is not reachable with key %s: add %s to the sandboxes=\"...\" option of its line in the users' keys file (%s)",
			rt.sandbox, gossh.FingerprintSHA256(key), rt.sandbox, keysSetting)
	}
	if !f.p.reg.Known(rt.sandbox) {
		return refuse("sandbox %s does not exist: tl-proxy's --config has no %q under \"sandboxes\"", rt.sandbox, rt.sandbox)
	}
	st.key, st.fp, st.route = k, gossh.FingerprintSHA256(key), rt
	return nil
}

// linkSandbox prepares st's connection to the sandbox. A port route dials
// now, so that its refusals (nothing on the port, the proxy's key not
// authorized) end the login. The default route only checks that the
// sandbox is connected: the agent's SSH server is dialled when a channel
// needs it (sshagent.go).
func (f *sshFront) linkSandbox(ctx context.Context, st *frontConn, remote string) error {
	if st.route.port != 0 {
		end, err := f.dialSandbox(ctx, st, remote)
		if err != nil {
			return err
		}
		st.agent = dialledAgent(end)
		return nil
	}
	if f.p.reg.Link(st.route.sandbox) == nil {
		return errNotConnected(st.route.sandbox)
	}
	st.agent = lazyAgent(func() (sshEnd, error) {
		end, err := f.dialSandbox(ctx, st, remote)
		if err != nil {
			st.log.Info().Err(err).Msg("ssh: the agent's SSH server is not reachable")
		}
		return end, err
	})
	return nil
}

// keysSetting names where the users' keys file is set, for refusals.
const keysSetting = `"ssh_authorized_keys" in tl-proxy's --config, or its --ssh-authorized-keys flag`

// authorizedLine is key as an authorized_keys line, to paste.
func authorizedLine(key gossh.PublicKey) string {
	return strings.TrimSpace(string(gossh.MarshalAuthorizedKey(key)))
}

func errNotConnected(sandbox string) error {
	return refuse("sandbox %s is not connected: start its agent (tl-agent --sandbox-id %s --proxy <this proxy's --uplink-addr>), or wait for it to reconnect, and retry", sandbox, sandbox)
}

// dialSandbox opens the uplink stream and the SSH connection to the
// sandbox: the agent's server (no auth: the uplink is trusted and the user
// is named in the stream header), or for a port route the server on that
// port, logging in as the sandbox's user (SandboxConfig.User) with the
// proxy's host key.
func (f *sshFront) dialSandbox(ctx context.Context, st *frontConn, remote string) (sshEnd, error) {
	rt := st.route
	h := uplink.Header{Kind: uplink.KindSSH, User: st.key.name, Remote: remote}
	login := f.p.cfg.sandboxUser(rt.sandbox)
	cc := &gossh.ClientConfig{User: login, HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: f.lim.handshakeTimeout(),
		Config: gossh.Config{Ciphers: sshCiphers}}
	if rt.port != 0 {
		h = uplink.Header{Kind: uplink.KindTCP, Port: rt.port, User: st.key.name, Remote: remote}
		cc.Auth = []gossh.AuthMethod{gossh.PublicKeys(f.signer)}
	}
	octx, cancel := context.WithTimeout(ctx, f.lim.handshakeTimeout())
	defer cancel()
	s, err := f.p.reg.Open(octx, rt.sandbox, h)
	if err != nil {
		var re *uplink.ReplyError
		switch {
		case errors.Is(err, ErrNotConnected):
			return sshEnd{}, errNotConnected(rt.sandbox)
		case errors.As(err, &re) && rt.port != 0:
			return sshEnd{}, refuse("nothing answers on port %d in sandbox %s (%s)", rt.port, rt.sandbox, re.Msg)
		case errors.As(err, &re):
			return sshEnd{}, refuse("sandbox %s cannot serve SSH: %s", rt.sandbox, re.Msg)
		}
		return sshEnd{}, refuse("sandbox %s: %v", rt.sandbox, err)
	}
	_ = s.SetDeadline(time.Now().Add(f.lim.handshakeTimeout()))
	conn, chans, reqs, err := gossh.NewClientConn(s, "sandbox:"+strconv.Itoa(rt.port), cc)
	if err != nil {
		s.Close()
		if rt.port != 0 {
			return sshEnd{}, refuse("the SSH server on port %d in sandbox %s refused the proxy (%v); append the proxy's key to ~%s/.ssh/authorized_keys in the sandbox:\n  %s",
				rt.port, rt.sandbox, err, login, authorizedLine(f.signer.PublicKey()))
		}
		return sshEnd{}, refuse("sandbox %s: SSH to the agent failed: %v", rt.sandbox, err)
	}
	_ = s.SetDeadline(time.Time{})
	return sshEnd{conn: conn, chans: chans, reqs: reqs}, nil
}

// takeChannel takes session channels (sshsession.go) and is the shortcut
// for the most common forwards, `-L` or `-D`
// to a port on the sandbox's loopback and `-L` to a unix socket: the proxy
// opens an uplink tcp or unix stream to the target directly instead of
// relaying the channel through the agent's SSH server, which saves one SSH
// encryption layer each way (docs/ssh.md). The agent dials the target
// either way; other targets take the SSH path.
func (f *sshFront) takeChannel(ctx context.Context, st *frontConn, remote string) func(gossh.NewChannel) bool {
	return func(nc gossh.NewChannel) bool {
		if nc.ChannelType() == "session" {
			f.session(ctx, st, remote, nc)
			return true
		}
		h, ok := localTarget(nc)
		if !ok {
			return false
		}
		h.User, h.Remote = st.key.name, remote
		s, err := f.p.reg.Open(ctx, st.route.sandbox, h)
		if err != nil {
			var re *uplink.ReplyError
			msg := "sandbox not reachable"
			if errors.As(err, &re) {
				msg = re.Msg
			}
			_ = nc.Reject(gossh.ConnectionFailed, msg)
			return true
		}
		ch, reqs, err := nc.Accept()
		if err != nil {
			s.Close()
			return true
		}
		relay.Channel(ch, reqs, s)
		return true
	}
}

// localTarget is the uplink target of a channel the proxy can serve with
// a plain stream: direct-tcpip to 127.0.0.1 or localhost, or
// direct-streamlocal to an absolute path.
func localTarget(nc gossh.NewChannel) (uplink.Header, bool) {
	switch nc.ChannelType() {
	case "direct-tcpip":
		var m struct {
			Host     string
			Port     uint32
			OrigHost string
			OrigPort uint32
		}
		if gossh.Unmarshal(nc.ExtraData(), &m) != nil || (m.Host != "127.0.0.1" && m.Host != "localhost") {
			return uplink.Header{}, false
		}
		h := uplink.Header{Kind: uplink.KindTCP, Port: int(m.Port)}
		return h, m.Port <= 65535 && h.Validate() == nil
	case "direct-streamlocal@openssh.com":
		var m struct {
			Path      string
			Reserved0 string
			Reserved1 uint32
		}
		if gossh.Unmarshal(nc.ExtraData(), &m) != nil {
			return uplink.Header{}, false
		}
		h := uplink.Header{Kind: uplink.KindUnix, Path: m.Path}
		return h, h.Validate() == nil
	}
	return uplink.Header{}, false
}
