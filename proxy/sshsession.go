package proxy

import (
	"context"
	"fmt"
	"io"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/internal/sftpframe"
	"github.com/tensorlake/tl-agent/uplink"
)

// Session channels on the default route are accepted by the proxy, which
// waits for the request that says what the session is. An `sftp`
// subsystem (what sftp, scp, sshfs and IDEs' file transfers open) goes to
// the agent as a bare SFTP stream (uplink kind sftp): one SSH layer fewer
// each way. Anything else (shell, exec, pty-req, agent forwarding, other
// subsystems) opens a session on the agent's SSH server, replays the env
// requests held so far, passes the request on and relays as usual.
//
// Until that request, whatever the client sends waits in the proxy (up to
// the channel's 2 MiB window), so unstarted sessions are capped per
// connection and per key, and closed after SSHLimits.UnstartedSeconds. A
// session over the cap waits, not yet accepted, up to
// SSHLimits.SlotWaitSeconds for a slot before it is refused.

// maxHeldEnv and maxHeldEnvBytes bound the env requests held before a
// session starts; more are refused, as sshd refuses names outside
// AcceptEnv.
const (
	maxHeldEnv      = 64
	maxHeldEnvBytes = 64 << 10
)

func (f *sshFront) session(ctx context.Context, st *frontConn, remote string, nc gossh.NewChannel) {
	release, full := takeBothWait(ctx, st.unstarted, f.keyUnstarted, st.fp, f.lim.slotWait())
	if full != "" {
		limit := f.lim.UnstartedPerConn
		if full == "key" {
			limit = f.lim.UnstartedPerKey
		}
		st.log.Debug().Str("cap", full).Msg("ssh session refused: too many unstarted sessions")
		_ = nc.Reject(gossh.ResourceShortage, fmt.Sprintf("tl-proxy: too many sessions not yet started on this %s (limit %d)", full, limit))
		return
	}
	defer release()
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	req, held := f.awaitStart(ctx, st, ch, reqs)
	if req == nil {
		return
	}
	release()
	var sub struct{ Name string }
	if req.Type == "subsystem" && gossh.Unmarshal(req.Payload, &sub) == nil && sub.Name == "sftp" {
		f.sftpStream(ctx, st, remote, ch, reqs, req)
		return
	}
	f.sessionViaAgent(st, ch, reqs, held, req)
}

// awaitStart holds env requests until the request that starts the
// session, and returns them. It returns nil when the session ended
// instead: the client closed it, or did not start it in time.
func (f *sshFront) awaitStart(ctx context.Context, st *frontConn, ch gossh.Channel, reqs <-chan *gossh.Request) (*gossh.Request, []*gossh.Request) {
	timer := time.NewTimer(f.lim.unstartedTimeout())
	defer timer.Stop()
	var held []*gossh.Request
	size := 0
	for {
		select {
		case req, ok := <-reqs:
			if !ok {
				ch.Close() // the client closed the channel before starting anything
				return nil, nil
			}
			if req.Type != "env" {
				return req, held
			}
			accept := len(held) < maxHeldEnv && size+len(req.Payload) <= maxHeldEnvBytes
			if accept {
				held = append(held, req)
				size += len(req.Payload)
			}
			if req.WantReply {
				_ = req.Reply(accept, nil)
			}
		case <-timer.C:
			st.log.Info().Dur("timeout", f.lim.unstartedTimeout()).Msg("ssh session closed: not started in time")
			failSession(ch, reqs, fmt.Sprintf("tl-proxy: session not started within %v; closed", f.lim.unstartedTimeout()))
			return nil, nil
		case <-ctx.Done():
			failSession(ch, reqs, "tl-proxy: shutting down")
			return nil, nil
		}
	}
}

// sessionViaAgent opens the session on the agent and relays it, starting
// with the requests already received.
func (f *sshFront) sessionViaAgent(st *frontConn, ch gossh.Channel, reqs <-chan *gossh.Request, held []*gossh.Request, req *gossh.Request) {
	conn, err := st.agent.get()
	if err != nil {
		if req.WantReply {
			_ = req.Reply(false, nil)
		}
		failSession(ch, reqs, "tl-proxy: "+refusalText(err))
		return
	}
	out, outReqs, err := conn.OpenChannel("session", nil)
	if err != nil {
		if req.WantReply {
			_ = req.Reply(false, nil)
		}
		msg := "sandbox connection lost"
		if oce, ok := err.(*gossh.OpenChannelError); ok {
			msg = oce.Message
		}
		failSession(ch, reqs, "tl-proxy: "+msg)
		return
	}
	for _, e := range held {
		_, _ = out.SendRequest(e.Type, false, e.Payload)
	}
	ok, err := out.SendRequest(req.Type, req.WantReply, req.Payload)
	if req.WantReply {
		_ = req.Reply(ok && err == nil, nil)
	}
	relayChannel(ch, reqs, out, outReqs, true)
}

// sftpStream serves an sftp subsystem over a bare SFTP uplink stream.
func (f *sshFront) sftpStream(ctx context.Context, st *frontConn, remote string, ch gossh.Channel, reqs <-chan *gossh.Request, req *gossh.Request) {
	s, err := f.p.reg.Open(ctx, st.route.sandbox, st.header(uplink.Header{Kind: uplink.KindSFTP, ExitTrailer: true}, remote))
	if err != nil {
		if req.WantReply {
			_ = req.Reply(false, nil)
		}
		failSession(ch, reqs, "tl-proxy: sandbox "+st.route.sandbox+": "+err.Error())
		return
	}
	if req.WantReply {
		_ = req.Reply(true, nil)
	}
	go gossh.DiscardRequests(reqs)
	in := make(chan struct{})
	go func() {
		defer close(in)
		_, _ = io.CopyBuffer(s, ch, make([]byte, relayBuf))
		if cw, ok := s.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}()
	out := &sftpframe.Splitter{W: ch}
	_, err = io.CopyBuffer(out, s, make([]byte, relayBuf))
	sendSFTPExit(ch, out, err)
	_ = ch.CloseWrite()
	_ = ch.Close()
	s.Close()
	<-in
}

// sendSFTPExit reports the agent's sftp-server's exit as sshd reports its
// subsystem's. The agent refuses the stream (above) when the session
// cannot start: the reason, exit status 1. Once it runs, the exit comes in
// the stream's trailer (internal/sftpframe); a stream that ends cleanly
// without one is an agent that predates trailers, whose server exits 0 at
// the client's EOF (scp reports failure without a status); a broken or
// malformed stream is 1.
func sendSFTPExit(ch gossh.Channel, out *sftpframe.Splitter, err error) {
	e, ok := out.Exit()
	switch {
	case ok && e.Signal != "":
		msg := struct {
			Name    string
			Core    bool
			Message string
			Lang    string
		}{e.Signal, e.Core, "", ""}
		_, _ = ch.SendRequest("exit-signal", false, gossh.Marshal(&msg))
		return
	case ok:
	case err == nil && out.Clean():
		e.Status = 0
	default:
		e.Status = 1
	}
	_, _ = ch.SendRequest("exit-status", false, gossh.Marshal(&struct{ Status uint32 }{e.Status}))
}

// failSession ends a session that cannot start: the reason on stderr,
// exit status 1, EOF, close.
func failSession(ch gossh.Channel, reqs <-chan *gossh.Request, msg string) {
	go gossh.DiscardRequests(reqs)
	_, _ = io.WriteString(ch.Stderr(), msg+"\r\n")
	_, _ = ch.SendRequest("exit-status", false, gossh.Marshal(&struct{ Status uint32 }{1}))
	_ = ch.CloseWrite()
	_ = ch.Close()
}
