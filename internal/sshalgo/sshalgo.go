// Package sshalgo is the one set of SSH algorithms that tl-agent's SSH
// servers offer: the proxy's front door, the agent's server (over the
// uplink and on --ssh-listen), and the proxy as the agent's client. It is
// what OpenSSH 9 offers by default, less what x/crypto does not implement
// (sntrup761, umac, the SHA-1 MACs), so every client a user already has
// connects: OpenSSH, PuTTY, paramiko (AES-CTR only), libssh2 (curl's
// sftp://: AES-CTR, no ETM MACs). docs/ssh.md lists them.
//
// On a server the client's order wins (RFC 4253 7.1; x/crypto does so, as
// OpenSSH's sshd does), so OpenSSH clients pick chacha20-poly1305. The
// order here matters where we are the client (the proxy's hop to the
// agent): AES-GCM first, the fastest in Go on CPUs with AES instructions
// (docs/benchmarks.md).
package sshalgo

import (
	"slices"

	gossh "golang.org/x/crypto/ssh"
)

// Ciphers: the AEADs, then AES-CTR for clients that have none.
var Ciphers = []string{
	gossh.CipherAES128GCM, gossh.CipherAES256GCM, gossh.CipherChaCha20Poly1305,
	gossh.CipherAES128CTR, gossh.CipherAES192CTR, gossh.CipherAES256CTR,
}

// KeyExchanges: x/crypto adds curve25519-sha256@libssh.org (OpenSSH < 7.3,
// libssh2) whenever curve25519-sha256 is listed. diffie-hellman-group14-sha1
// is left out: every client we know of (paramiko 2.12, libssh2 1.10,
// PuTTY) has a SHA-2 exchange.
var KeyExchanges = []string{
	gossh.KeyExchangeMLKEM768X25519, gossh.KeyExchangeCurve25519,
	gossh.KeyExchangeECDHP256, gossh.KeyExchangeECDHP384, gossh.KeyExchangeECDHP521,
	gossh.KeyExchangeDHGEXSHA256, gossh.KeyExchangeDH16SHA512, gossh.KeyExchangeDH14SHA256,
}

// MACs serve only AES-CTR (the AEADs carry their own). No SHA-1: paramiko
// and libssh2 have hmac-sha2-256.
var MACs = []string{
	gossh.HMACSHA256ETM, gossh.HMACSHA512ETM, gossh.HMACSHA256, gossh.HMACSHA512,
}

// Config is an x/crypto Config with these algorithms, on copies of the
// lists so that no caller can change another's.
func Config() gossh.Config {
	return gossh.Config{
		Ciphers:      slices.Clone(Ciphers),
		KeyExchanges: slices.Clone(KeyExchanges),
		MACs:         slices.Clone(MACs),
	}
}

// maxReason bounds a handshake error in a log line: x/crypto's "no common
// algorithm" errors quote the peer's lists, which a hostile peer can make
// as long as a packet (256 KiB).
const maxReason = 512

// Reason is err's text for a log line, at most maxReason bytes. The errors
// of a failed handshake carry algorithm names, key fingerprints and
// refusals, never key material.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) <= maxReason {
		return s
	}
	return s[:maxReason] + "...(truncated)"
}
