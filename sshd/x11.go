package sshd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/forward"
	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/launch"
)

// X11 forwarding of a session: the display itself (listener, cookie swap,
// channels) is forward's; the session takes one x11-req before its
// program starts, exports DISPLAY and, as sshd does before the shell,
// runs `xauth -q -` as the user to add the display's (fake) cookie.

// xauthTimeout bounds the xauth run (it waits for the lock of
// ~/.Xauthority, and gives up by itself after a few seconds).
const xauthTimeout = 10 * time.Second

// x11Request serves x11-req: one per session, before its program. A
// refusal says why on the session's stderr, as the client only prints
// "X11 forwarding request failed". DISPLAY is set at start.
func (ss *session) x11Request(payload []byte) bool {
	if ss.started() || ss.failed || ss.x11 != nil {
		return false
	}
	r, cookie, err := forward.ParseX11Request(payload)
	if err == nil {
		ss.x11, err = forward.X11Forward(ss.ctx, r, cookie)
	}
	if err != nil {
		ss.log.Warn().Err(err).Msg("ssh: X11 forwarding refused")
		_, _ = io.WriteString(ss.ch.Stderr(), "tl-agent: X11 forwarding refused: "+err.Error()+"\r\n")
		return false
	}
	return true
}

// closeX11 stops the session's display listening (its open connections
// end with theirs or the SSH connection's).
func (ss *session) closeX11() {
	if ss.x11 != nil {
		ss.x11.Close()
	}
}

// xauth adds the display's cookie for the user, as sshd does: `remove`
// then `add` on xauth's stdin, the display as unix:N.screen. Without xauth
// the display still forwards, but X programs cannot authenticate: the
// user is told on stderr.
func (ss *session) xauth(u *identity.User, env map[string]string) {
	d := ss.x11
	c, err := launch.Build(launch.Spec{User: u, Argv: []string{"xauth", "-q", "-"}, Env: env, Group: launch.NewGroup})
	if err != nil {
		msg := "xauth cannot run (" + err.Error() + ")"
		if errors.Is(err, launch.ErrNotFound) {
			msg = "xauth is not installed in the sandbox"
		}
		ss.log.Warn().Str("reason", msg).Int("display", d.Number).Msg("ssh: X11 cookie not added")
		_, _ = io.WriteString(ss.ch.Stderr(), fmt.Sprintf("tl-agent: %s: X11 programs cannot authenticate to %s\r\n", msg, d.Display()))
		return
	}
	input := fmt.Sprintf("remove %s\nadd %s %s %s\n", d.AuthDisplay(), d.AuthDisplay(), d.Proto, d.FakeCookie)
	out, err := ss.runShort(c, input)
	if err != nil {
		ss.log.Warn().Err(err).Str("output", truncate(strings.TrimSpace(out), 300)).Msg("ssh: xauth failed")
		_, _ = io.WriteString(ss.ch.Stderr(), "tl-agent: xauth failed: "+err.Error()+"\r\n")
	}
}

// runShort runs c with input on its stdin (small: it fits the pipe) and
// returns its output, killing it after xauthTimeout.
func (ss *session) runShort(c *launch.Command, input string) (string, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return "", err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return "", err
	}
	defer outR.Close()
	c.Cmd.Stdin, c.Cmd.Stdout, c.Cmd.Stderr = inR, outW, outW
	p, err := launch.Start(c, ss.srv.reaper.Start)
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		return "", err
	}
	_, _ = io.WriteString(inW, input)
	inW.Close()
	timer := time.NewTimer(xauthTimeout)
	defer timer.Stop()
	select {
	case <-p.Done():
	case <-timer.C:
		_ = p.SignalGroup(unix.SIGKILL)
		<-p.Done()
	}
	_ = outR.SetReadDeadline(time.Now().Add(time.Second))
	out, _ := io.ReadAll(io.LimitReader(outR, 4096))
	if e := p.Wait(); e.Code != 0 || e.Signal != 0 {
		return string(out), fmt.Errorf("xauth: %s", e.String())
	}
	return string(out), nil
}
