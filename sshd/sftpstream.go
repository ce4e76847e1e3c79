package sshd

import (
	"io"
	"net"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/sftpd"
)

// serveSFTPStream runs an sftp-server as the sandbox user on c: an uplink
// stream of kind sftp. The proxy's front door sends `sftp` subsystem
// sessions this way (it has authenticated the user and speaks SSH to them
// itself), which saves a layer of SSH encryption each way. The stream
// carries the SFTP protocol both ways and ends when the sftp-server exits.
func (s *Server) serveSFTPStream(c net.Conn, log zerolog.Logger) {
	defer c.Close()
	u, err := identity.Lookup(s.cfg.User)
	if err != nil {
		log.Warn().Err(err).Msg("sftp stream")
		return
	}
	p, err := newPipes()
	if err != nil {
		log.Warn().Err(err).Msg("sftp stream: pipes")
		return
	}
	proc, err := sftpd.Start(s.reaper, s.cfg.Exe, u, u.Env("", nil), p.inR, p.outW, p.errW)
	if err != nil {
		p.closeAll()
		log.Warn().Err(err).Msg("sftp stream")
		return
	}
	p.childEnds()
	log.Info().Msg("sftp session over the uplink")
	go func() {
		// The client's EOF (or a dead stream) is the server's stdin EOF,
		// on which it exits 0.
		_, _ = io.CopyBuffer(writerOnly{p.inW}, c, make([]byte, outBuf))
		p.inW.Close()
	}()
	go func() { _, _ = io.Copy(io.Discard, p.errR) }()
	if _, err := io.CopyBuffer(writerOnly{c}, p.outR, make([]byte, outBuf)); err != nil {
		c.Close() // the user is gone: end the stdin copy, and so the server
	}
	exit := proc.Wait()
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	p.outR.Close()
	p.errR.Close()
	log.Debug().Str("exit", exit.String()).Msg("sftp session ended")
}
