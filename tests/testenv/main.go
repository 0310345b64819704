// knit-testenv runs a real, throw-away Kubernetes control plane for
// end-to-end tests: embedded etcd, the upstream kube-apiserver and
// (optionally) the upstream kube-controller-manager limited to a few
// controllers. See README.md for the protocol.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

type options struct {
	dir               string
	crdDirs           stringList
	exitOnStdinEOF    bool
	printEnv          bool
	verbose           bool
	verbosity         int
	controllerManager bool
	controllers       string
	apiserverArgs     stringList
	kcmArgs           stringList
	timeout           time.Duration
}

var (
	verbose bool
	started = time.Now()
)

// logf reports progress on stderr, only with -v (quiet by default).
func logf(format string, args ...any) {
	if verbose {
		fmt.Fprintf(os.Stderr, "knit-testenv: [%5.2fs] "+format+"\n",
			append([]any{time.Since(started).Seconds()}, args...)...)
	}
}

func main() {
	if len(os.Args) > 1 {
		if _, ok := components[os.Args[1]]; ok {
			os.Exit(runComponent(os.Args[1], os.Args[2:]))
		}
	}

	var o options
	flag.StringVar(&o.dir, "dir", "", "use this directory (created if missing, kept on exit) instead of a fresh temp dir")
	flag.Var(&o.crdDirs, "crds", "directory of *.yaml CRDs to apply before reporting ready (repeatable)")
	flag.BoolVar(&o.exitOnStdinEOF, "exit-on-stdin-eof", false, "stop when stdin is closed")
	flag.BoolVar(&o.printEnv, "print-env", false, "also print KNIT_TESTENV_DIR=, KNIT_KUBECONFIG=, KUBE_APISERVER= lines before the KUBECONFIG= line")
	flag.BoolVar(&o.verbose, "v", false, "verbose: forward all component logs to stderr")
	flag.IntVar(&o.verbosity, "verbosity", -1, "klog --v level of the components (default 0, or 2 with -v); etcd logs at info level from 5")
	flag.BoolVar(&o.controllerManager, "controller-manager", true, "run kube-controller-manager")
	flag.StringVar(&o.controllers, "controllers", "garbagecollector,namespace,serviceaccount", "kube-controller-manager --controllers")
	flag.Var(&o.apiserverArgs, "apiserver-arg", "extra kube-apiserver flag, e.g. --apiserver-arg=--feature-gates=X=true (repeatable)")
	flag.Var(&o.kcmArgs, "controller-manager-arg", "extra kube-controller-manager flag (repeatable)")
	flag.DurationVar(&o.timeout, "timeout", 3*time.Minute, "give up if not ready within this time")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "knit-testenv: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	verbose = o.verbose
	// A closed stdout/stderr pipe must not kill us before we clean up.
	signal.Ignore(syscall.SIGPIPE)
	if o.verbosity < 0 {
		o.verbosity = 0
		if o.verbose {
			o.verbosity = 2
		}
	}
	stop := stopSignals(o.exitOnStdinEOF)
	if err := run(stop, &o); err != nil {
		if stop.Err() != nil { // asked to stop while starting: not a failure
			logf("stopped while starting: %v", context.Cause(stop))
			return
		}
		fmt.Fprintf(os.Stderr, "knit-testenv: %v\n", err)
		os.Exit(1)
	}
}

// stopSignals returns a context cancelled on SIGINT/SIGTERM, when the parent
// process dies, or (optionally) when stdin reaches EOF.
func stopSignals(exitOnStdinEOF bool) context.Context {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		cancel(fmt.Errorf("received %v", s))
	}()
	watchParent(os.Getppid(), func() { cancel(errors.New("parent process exited")) })
	if exitOnStdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			cancel(errors.New("stdin closed"))
		}()
	}
	return ctx
}

func run(stop context.Context, o *options) (err error) {
	// Working directory: everything (etcd data, certs, kubeconfigs, logs) lives here.
	dir, owned := o.dir, o.dir == ""
	if owned {
		if dir, err = os.MkdirTemp("", "knit-testenv-"); err != nil {
			return err
		}
	} else if err = os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	cleanupDir := ""
	if owned {
		cleanupDir = dir
		defer os.RemoveAll(dir)
	}
	logf("dir %s", dir)

	p, err := newPKI()
	if err != nil {
		return err
	}
	paths, err := p.write(filepath.Join(dir, "pki"))
	if err != nil {
		return err
	}
	ids, err := identities()
	if err != nil {
		return err
	}
	tokenFile := filepath.Join(dir, "tokens.csv")
	if err := writeTokenFile(tokenFile, ids); err != nil {
		return err
	}
	apiPort, err := freePort()
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	kubeconfigs := map[string]string{}
	for _, id := range ids {
		kubeconfigs[id.name] = filepath.Join(dir, id.name+".kubeconfig")
		if err := writeKubeconfig(kubeconfigs[id.name], server, p.caPEM, id); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, id.name+".token"), []byte(id.token), 0o600); err != nil {
			return err
		}
	}

	ctx, cancel := context.WithTimeoutCause(stop, o.timeout, fmt.Errorf("not ready within %v", o.timeout))
	defer cancel()

	etcd, etcdURL, err := startEtcd(filepath.Join(dir, "etcd"), o.verbosity >= 5)
	if err != nil {
		return err
	}
	defer func() {
		etcdLogLevel.SetLevel(zap.FatalLevel)
		etcd.Close()
		logf("etcd stopped")
	}()
	logf("etcd ready at %s", etcdURL)

	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", apiPort),
		"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
		"--tls-cert-file=" + paths["apiserver.crt"],
		"--tls-private-key-file=" + paths["apiserver.key"],
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=Node,RBAC",
		// Service account tokens: the apiserver refuses to start without an
		// issuer and keys, and signs TokenRequest tokens with them.
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + paths["sa.pub"],
		"--service-account-signing-key-file=" + paths["sa.key"],
		"--service-cluster-ip-range=10.0.0.0/24",
		// No real node network: don't publish 127.0.0.1 as the endpoint of the
		// "kubernetes" service (loopback endpoints are invalid anyway).
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--profiling=false",
		fmt.Sprintf("--v=%d", o.verbosity),
	}
	apiArgs = append(apiArgs, o.apiserverArgs...)
	apiserver, err := startChild("kube-apiserver", apiArgs, filepath.Join(dir, "kube-apiserver.log"), o.verbose, cleanupDir)
	if err != nil {
		return err
	}
	defer func() {
		apiserver.stop(10 * time.Second)
		logf("kube-apiserver stopped")
	}()

	caPool := x509.NewCertPool()
	caPool.AppendCertsFromPEM(p.caPEM)
	apiClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool}}}
	if err := waitHealthy(ctx, apiClient, server+"/readyz", ids[0].token, apiserver); err != nil {
		return err
	}
	apiserver.forwardErrors.Store(true)
	logf("kube-apiserver ready at %s", server)

	adminCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfigs["admin"])
	if err != nil {
		return err
	}
	crds, err := readCRDs(o.crdDirs)
	if err != nil {
		return err
	}
	// CRDs go in before the controller manager starts so that the garbage
	// collector's first discovery already watches the custom resources.
	if err := applyCRDs(ctx, adminCfg, crds); err != nil {
		return err
	}

	children := []*child{apiserver}
	if o.controllerManager {
		kcmPort, err := freePort()
		if err != nil {
			return err
		}
		kcmArgs := []string{
			"--kubeconfig=" + kubeconfigs["kube-controller-manager"],
			"--controllers=" + o.controllers,
			"--leader-elect=false",
			"--use-service-account-credentials=false",
			"--bind-address=127.0.0.1",
			fmt.Sprintf("--secure-port=%d", kcmPort),
			"--cert-dir=" + filepath.Join(dir, "kube-controller-manager-certs"),
			"--profiling=false",
			fmt.Sprintf("--v=%d", o.verbosity),
		}
		kcmArgs = append(kcmArgs, o.kcmArgs...)
		kcm, err := startChild("kube-controller-manager", kcmArgs, filepath.Join(dir, "kube-controller-manager.log"), o.verbose, cleanupDir)
		if err != nil {
			return err
		}
		// Deferred after the apiserver's stop, so it runs before it.
		defer func() {
			kcm.stop(5 * time.Second)
			logf("kube-controller-manager stopped")
		}()
		children = append(children, kcm)
		// Its serving cert is self-signed; /healthz needs no credentials.
		kcmClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		if err := waitHealthy(ctx, kcmClient, fmt.Sprintf("https://127.0.0.1:%d/healthz", kcmPort), "", kcm); err != nil {
			return err
		}
		if strings.Contains(","+o.controllers+",", ",serviceaccount,") {
			// Proof that controllers are actually running, and pods in
			// "default" can pass ServiceAccount admission right away.
			if err := waitDefaultServiceAccount(ctx, adminCfg, kcm); err != nil {
				return err
			}
		}
		kcm.forwardErrors.Store(true)
		logf("kube-controller-manager ready (%s)", o.controllers)
	}

	if o.printEnv {
		fmt.Printf("KNIT_TESTENV_DIR=%s\nKNIT_KUBECONFIG=%s\nKUBE_APISERVER=%s\n", dir, kubeconfigs["knit"], server)
	}
	fmt.Printf("KUBECONFIG=%s\n", kubeconfigs["admin"])
	_ = os.Stdout.Sync()

	// Run until asked to stop or until a component dies on its own.
	died := make(chan *child, len(children))
	for _, c := range children {
		go func() { <-c.done; died <- c }()
	}
	select {
	case <-stop.Done():
		logf("stopping: %v", context.Cause(stop))
		return nil
	case c := <-died:
		return fmt.Errorf("%s exited unexpectedly (%v); last output:\n%s", c.name, c.err, c.lastLines())
	}
}

// waitHealthy polls url until it answers 200, the component exits, or ctx ends.
func waitHealthy(ctx context.Context, client *http.Client, url, token string, c *child) error {
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if resp, err := client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %v; last output:\n%s", c.name, context.Cause(ctx), c.lastLines())
		case <-c.done:
			return fmt.Errorf("%s exited (%v) before it was ready; last output:\n%s", c.name, c.err, c.lastLines())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitDefaultServiceAccount waits for the serviceaccount controller to create
// default/default.
func waitDefaultServiceAccount(ctx context.Context, cfg *rest.Config, c *child) error {
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	sas := client.Resource(schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}).Namespace("default")
	for {
		if _, err := sas.Get(ctx, "default", metav1.GetOptions{}); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for default service account: %v; last output:\n%s", context.Cause(ctx), c.lastLines())
		case <-c.done:
			return fmt.Errorf("%s exited (%v); last output:\n%s", c.name, c.err, c.lastLines())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
