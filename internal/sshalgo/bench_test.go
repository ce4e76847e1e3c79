package sshalgo

import (
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

// BenchmarkCipher moves data through one x/crypto SSH channel per cipher
// (client offering only it, server with Config): the cost of one SSH
// layer, what the client's choice changes at the proxy's front door.
// go test -run - -bench Cipher ./internal/sshalgo
func BenchmarkCipher(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := gossh.NewSignerFromKey(priv)
	for _, c := range []struct{ cipher, mac string }{
		{gossh.CipherAES128GCM, ""}, {gossh.CipherChaCha20Poly1305, ""},
		{gossh.CipherAES128CTR, gossh.HMACSHA256ETM},
	} {
		b.Run(c.cipher, func(b *testing.B) {
			a, z := tcpPair(b)
			defer a.Close()
			defer z.Close()
			scfg := &gossh.ServerConfig{Config: Config(), NoClientAuth: true}
			scfg.AddHostKey(signer)
			go func() {
				conn, chans, reqs, err := gossh.NewServerConn(a, scfg)
				if err != nil {
					return
				}
				defer conn.Close()
				go gossh.DiscardRequests(reqs)
				for nc := range chans {
					ch, creqs, err := nc.Accept()
					if err != nil {
						return
					}
					go gossh.DiscardRequests(creqs)
					_, _ = io.Copy(io.Discard, ch)
					ch.Close()
				}
			}()
			cc := Config()
			cc.Ciphers = []string{c.cipher}
			if c.mac != "" {
				cc.MACs = []string{c.mac}
			}
			conn, chans, reqs, err := gossh.NewClientConn(z, "pipe", &gossh.ClientConfig{Config: cc, User: "u", HostKeyCallback: gossh.InsecureIgnoreHostKey()})
			if err != nil {
				b.Fatal(err)
			}
			client := gossh.NewClient(conn, chans, reqs)
			defer client.Close()
			ch, creqs, err := client.OpenChannel("session", nil)
			if err != nil {
				b.Fatal(err)
			}
			go gossh.DiscardRequests(creqs)
			buf := make([]byte, 32<<10)
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := ch.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			ch.Close()
		})
	}
}
