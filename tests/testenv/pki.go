package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// identity is one static-token user of the API server (--token-auth-file).
type identity struct {
	name   string // file stem: <name>.token, <name>.kubeconfig
	user   string
	groups []string
	token  string
}

// identities returns the users the test environment knows, with fresh tokens.
func identities() ([]identity, error) {
	ids := []identity{
		{name: "admin", user: "knit-testenv-admin", groups: []string{"system:masters"}},
		{name: "knit", user: "system:serviceaccount:knit-system:knit",
			groups: []string{"system:serviceaccounts", "system:serviceaccounts:knit-system", "system:authenticated"}},
		// The controller manager gets its own name (visible in audit/managedFields)
		// but full rights: with --use-service-account-credentials=false the garbage
		// collector must be able to delete any kind, including custom resources.
		{name: "kube-controller-manager", user: "system:kube-controller-manager", groups: []string{"system:masters"}},
	}
	for i := range ids {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		ids[i].token = hex.EncodeToString(b)
	}
	return ids, nil
}

// writeTokenFile writes the CSV read by --token-auth-file:
// token,user,uid,"group1,group2".
func writeTokenFile(path string, ids []identity) error {
	var sb strings.Builder
	for _, id := range ids {
		fmt.Fprintf(&sb, "%s,%s,%s,%q\n", id.token, id.user, id.user, strings.Join(id.groups, ","))
	}
	return os.WriteFile(path, []byte(sb.String()), 0o600)
}

// writeKubeconfig writes a kubeconfig using bearer-token auth with the CA embedded.
func writeKubeconfig(path, server string, caPEM []byte, id identity) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["knit-testenv"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[id.name] = &clientcmdapi.AuthInfo{Token: id.token}
	cfg.Contexts["knit-testenv"] = &clientcmdapi.Context{Cluster: "knit-testenv", AuthInfo: id.name, Namespace: "default"}
	cfg.CurrentContext = "knit-testenv"
	return clientcmd.WriteToFile(*cfg, path)
}

// pki is the self-signed material the API server needs.
type pki struct {
	caPEM, certPEM, keyPEM []byte // serving CA, serving cert and its key
	saKeyPEM, saPubPEM     []byte // service-account token signing key pair
}

func newPKI() (*pki, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "knit-testenv-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		// 10.0.0.1 and the kubernetes.default names are what in-cluster clients
		// would use (first IP of --service-cluster-ip-range).
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.0.0.1")},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}

	// RSA is the most widely supported service-account signing algorithm.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	return &pki{
		caPEM:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:   pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		saKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		saPubPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
	}, nil
}

// write stores the material under dir/pki and returns the paths by role.
func (p *pki) write(dir string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"ca.crt": p.caPEM, "apiserver.crt": p.certPEM, "apiserver.key": p.keyPEM,
		"sa.key": p.saKeyPEM, "sa.pub": p.saPubPEM,
	}
	paths := map[string]string{}
	for name, data := range files {
		paths[name] = filepath.Join(dir, name)
		if err := os.WriteFile(paths[name], data, 0o600); err != nil {
			return nil, err
		}
	}
	return paths, nil
}
