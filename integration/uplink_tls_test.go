package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCA makes a CA and a server certificate for name, signed by it, and
// returns the paths of the CA's cert and the server's cert and key.
func writeCA(t *testing.T, dir, name string) (caPath, certPath, keyPath string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tl-test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(srvKey)
	write := func(p, typ string, der []byte) string {
		p = filepath.Join(dir, p)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("proxy.pem", "CERTIFICATE", srvDER), write("proxy.key", "EC PRIVATE KEY", keyDER)
}

// TestUplinkTLS runs the uplink over TLS with a pinned CA and server name,
// then checks that an agent pinning another CA, or expecting another name,
// does not connect and says why.
func TestUplinkTLS(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeCA(t, dir, "proxy.test")
	s := Start(t, Options{
		NoSandbox: true,
		ProxyArgs: []string{"--uplink-tls-cert", cert, "--uplink-tls-key", key},
		AgentArgs: []string{"--tls", "--ca-file", ca, "--server-name", "proxy.test"},
	})
	s.JSON("GET", "/api/v1/health", nil, 200, nil)

	otherCA, _, _ := writeCA(t, t.TempDir(), "proxy.test")
	for name, args := range map[string][]string{
		"other CA":   {"--tls", "--ca-file", otherCA, "--server-name", "proxy.test"},
		"other name": {"--tls", "--ca-file", ca, "--server-name", "evil.test"},
		"plain TCP":  nil,
	} {
		t.Run(name, func(t *testing.T) {
			bad := s.StartExtraAgent(t, args)
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(bad.String(), `"uplink down"`) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if !strings.Contains(bad.String(), `"uplink down"`) || strings.Contains(bad.String(), `"uplink connected"`) {
				t.Fatalf("agent with %v: want a failed uplink, got:\n%s", args, bad.String())
			}
		})
	}
}
