package sshd

import (
	"errors"
	"io"

	"github.com/tensorlake/tl-agent/sftpd"
	"github.com/tensorlake/tl-agent/supervisor"
)

// sftpRun is a session's sftp subsystem. sftpd serves it, as it serves
// the proxy's bare sftp streams; the session reports its exit.
type sftpRun struct {
	done chan struct{} // closed when Serve returned
	exit supervisor.Exit
	err  error // the session could not start
}

// startSFTP runs the subsystem on the channel. A failure to start comes
// back through run.err, and is reported like any program that cannot
// start: the reason on stderr, exit status 1.
func (ss *session) startSFTP(env []string) error {
	srv := ss.srv.cfg.SFTP
	if srv == nil {
		return errors.New("sftp is not enabled")
	}
	run := &sftpRun{done: make(chan struct{})}
	ss.sftp = run
	ss.log.Info().Msg("ssh sftp")
	go func() { // joined by finish or hangup, before the session handler returns
		defer close(run.done)
		run.exit, run.err = srv.Serve(ss.ctx, sftpd.Session{In: ss.ch, Out: ss.ch, Stderr: ss.ch.Stderr(), Env: env})
	}()
	return nil
}

// finishSFTP reports the subsystem's end: exit-status, EOF, close.
// Closing the channel ends sftpd's copy of its input.
func (ss *session) finishSFTP() {
	<-ss.sftp.done
	exit := ss.sftp.exit
	if err := ss.sftp.err; err != nil {
		ss.log.Warn().Err(err).Msg("ssh: cannot start sftp")
		_, _ = io.WriteString(ss.ch.Stderr(), "tl-agent: "+err.Error()+"\r\n")
		exit = exitStatus(1)
	}
	ss.sendExit(exit)
	_ = ss.ch.CloseWrite()
	_ = ss.ch.Close()
	ss.log.Debug().Str("exit", exit.String()).Msg("ssh: sftp ended")
}
