// Command controlplane runs a real Kubernetes control plane in one process for
// FlexTrain's cluster tests: embedded etcd, kube-apiserver, kube-controller-manager
// and kube-scheduler, all from Kubernetes' own modules at one pinned release, started
// the way Kubernetes' integration tests start them (cmd/*/app/testing), with no kubelet.
//
//	controlplane --dir DIR [--port 0] [--ready-timeout 120s] [--audit-log FILE [--audit-policy FILE]]
//
// DIR receives everything: etcd's data, the self-signed serving certificate, the
// service-account keys, the static token file and kubeconfig files for the admin,
// the controller manager and the scheduler. The line
//
//	controlplane: ready kubeconfig=DIR/admin.kubeconfig server=https://127.0.0.1:PORT
//
// is printed once /readyz answers ok. SIGTERM or SIGINT stops the scheduler, the
// controller manager, the API server and etcd in that order and exits 0.
//
// The API server runs with Node and RBAC authorization, the default admission
// plugins plus NodeRestriction and OwnerReferencesPermissionEnforcement, and
// service-account token signing. With --audit-log it also writes its audit log there
// (JSON lines, one file, never rotated), by the policy in --audit-policy or, without
// one, every request at level Metadata once it completes (long-running requests such
// as watches also when their response starts); without it, no audit log.
//
// The controller manager runs every controller that is on by default (job,
// deployment, replicaset, garbage collector, namespace, serviceaccount, node
// lifecycle, ...), each with its own service-account credentials, as kubeadm clusters
// run it.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/client-go/util/keyutil"
	"k8s.io/klog/v2"

	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	schedapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	schedoptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
)

func main() {
	dir := flag.String("dir", "", "directory for etcd data, certificates, keys and kubeconfigs (created; required)")
	port := flag.Int("port", 0, "API server port on 127.0.0.1 (0: a free one)")
	readyTimeout := flag.Duration("ready-timeout", 180*time.Second, "how long to wait for /readyz before giving up")
	verbosity := flag.Int("v", 0, "klog verbosity of the components")
	auditLog := flag.String("audit-log", "", "write the API server's audit log to this file (JSON lines; none when empty)")
	auditPolicy := flag.String("audit-policy", "", "audit policy file for --audit-log (default: every request at level Metadata)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "controlplane: --dir is required")
		os.Exit(2)
	}
	klogFlags := flag.NewFlagSet("klog", flag.ExitOnError)
	klog.InitFlags(klogFlags)
	_ = klogFlags.Set("v", strconv.Itoa(*verbosity))

	if *auditPolicy != "" && *auditLog == "" {
		fmt.Fprintln(os.Stderr, "controlplane: --audit-policy needs --audit-log")
		os.Exit(2)
	}
	if err := run(*dir, *port, *readyTimeout, *auditLog, *auditPolicy); err != nil {
		fmt.Fprintf(os.Stderr, "controlplane: %v\n", err)
		os.Exit(1)
	}
}

// component is one part of the control plane running in a goroutine.
type component struct {
	name   string
	cancel context.CancelFunc
	done   chan error
}

func start(name string, fn func(ctx context.Context) error) *component {
	ctx, cancel := context.WithCancel(context.Background())
	c := &component{name: name, cancel: cancel, done: make(chan error, 1)}
	go func() { c.done <- fn(ctx) }()
	return c
}

// stop cancels the component and waits for it (at most timeout).
func (c *component) stop(timeout time.Duration) {
	c.cancel()
	select {
	case err := <-c.done:
		// After cancellation some components return an error that only says they were
		// stopped (the scheduler: "finished without leader elect"); it is logged, not fatal.
		if err != nil && !errors.Is(err, context.Canceled) {
			klog.V(1).InfoS("component returned after stop", "component", c.name, "err", err)
		}
	case <-time.After(timeout):
		fmt.Fprintf(os.Stderr, "controlplane: %s did not stop within %s\n", c.name, timeout)
	}
}

func run(dir string, port int, readyTimeout time.Duration, auditLog, auditPolicy string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)

	etcd, etcdURL, err := startEtcd(filepath.Join(dir, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer func() {
		etcd.Close()
		fmt.Fprintln(os.Stderr, "controlplane: etcd stopped")
	}()

	listener, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("API server listener: %w", err)
	}
	port = listener.Addr().(*net.TCPAddr).Port
	server := fmt.Sprintf("https://127.0.0.1:%d", port)

	creds, err := writeCredentials(dir)
	if err != nil {
		return err
	}

	var running []*component
	stopAll := func() {
		for i := len(running) - 1; i >= 0; i-- {
			running[i].stop(30 * time.Second)
			fmt.Fprintf(os.Stderr, "controlplane: %s stopped\n", running[i].name)
		}
	}
	defer stopAll()

	apiserverFlags := []string{
		"--etcd-servers=" + etcdURL,
		"--cert-dir=" + filepath.Join(dir, "pki"),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
		"--token-auth-file=" + creds.tokenFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + creds.saPublicKey,
		"--service-account-signing-key-file=" + creds.saPrivateKey,
		"--api-audiences=https://kubernetes.default.svc.cluster.local",
		"--allow-privileged=true",
	}
	if auditLog != "" {
		flags, err := auditFlags(dir, auditLog, auditPolicy)
		if err != nil {
			return err
		}
		apiserverFlags = append(apiserverFlags, flags...)
	}
	apiserver, err := startAPIServer(listener, apiserverFlags)
	if err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	running = append(running, apiserver)

	// The serving certificate exists once the server has started; wait for /readyz
	// with the admin token, then write the kubeconfigs that trust that certificate.
	servingCert := filepath.Join(dir, "pki", "apiserver.crt")
	if err := waitReady(server, creds.tokens["admin"], servingCert, readyTimeout, signals, apiserver); err != nil {
		return err
	}
	// The serving certificate file holds the leaf, then the self-signed CA that issued
	// it: clients and the controller manager's root CA get the CA alone.
	caFile := filepath.Join(dir, "pki", "ca.crt")
	ca, err := extractCA(servingCert, caFile)
	if err != nil {
		return err
	}
	kubeconfigs := map[string]string{}
	for _, user := range []string{"admin", "kube-controller-manager", "kube-scheduler"} {
		path := filepath.Join(dir, user+".kubeconfig")
		if err := writeKubeconfig(path, server, ca, user, creds.tokens[user]); err != nil {
			return err
		}
		kubeconfigs[user] = path
	}

	kcm, err := startControllerManager([]string{
		"--kubeconfig=" + kubeconfigs["kube-controller-manager"],
		"--authentication-kubeconfig=" + kubeconfigs["kube-controller-manager"],
		"--authorization-kubeconfig=" + kubeconfigs["kube-controller-manager"],
		"--leader-elect=false",
		"--secure-port=0",
		"--controllers=*",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + creds.saPrivateKey,
		"--root-ca-file=" + caFile,
		"--cluster-name=flextrain-test",
		// Nodes are kept Ready by leases from the node agent; a node whose agent stops
		// goes NotReady after this long.
		"--node-monitor-grace-period=20s",
		"--concurrent-job-syncs=10",
		"--concurrent-gc-syncs=20",
	})
	if err != nil {
		return fmt.Errorf("kube-controller-manager: %w", err)
	}
	running = append(running, kcm)

	sched, err := startScheduler([]string{
		"--kubeconfig=" + kubeconfigs["kube-scheduler"],
		"--authentication-kubeconfig=" + kubeconfigs["kube-scheduler"],
		"--authorization-kubeconfig=" + kubeconfigs["kube-scheduler"],
		"--leader-elect=false",
		"--secure-port=0",
	})
	if err != nil {
		return fmt.Errorf("kube-scheduler: %w", err)
	}
	running = append(running, sched)

	fmt.Printf("controlplane: ready kubeconfig=%s server=%s\n", kubeconfigs["admin"], server)

	select {
	case sig := <-signals:
		fmt.Fprintf(os.Stderr, "controlplane: %s received, stopping\n", sig)
		return nil
	case err := <-firstDone(running):
		return fmt.Errorf("a component stopped: %w", err)
	}
}

// defaultAuditPolicy logs every request at level Metadata (who, verb, object, response
// code, timestamps; no bodies) once, when it completes; watches and other long-running
// requests also when their response starts.
const defaultAuditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
`

// auditFlags are the API server flags of an audit log at path: one plain file (no
// rotation), written as each event happens, by the policy file or defaultAuditPolicy.
func auditFlags(dir, path, policy string) ([]string, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if policy == "" {
		policy = filepath.Join(dir, "audit-policy.yaml")
		if err := os.WriteFile(policy, []byte(defaultAuditPolicy), 0o600); err != nil {
			return nil, err
		}
	} else if policy, err = filepath.Abs(policy); err != nil {
		return nil, err
	}
	return []string{
		"--audit-log-path=" + path,
		"--audit-policy-file=" + policy,
		"--audit-log-format=json",
		"--audit-log-mode=blocking",
		"--audit-log-maxsize=0",
	}, nil
}

// firstDone reports the first component that returns on its own.
func firstDone(cs []*component) <-chan error {
	out := make(chan error, len(cs))
	var once sync.Once
	for _, c := range cs {
		go func(c *component) {
			err := <-c.done
			c.done <- err // keep it for stop()
			once.Do(func() { out <- fmt.Errorf("%s: %v", c.name, err) })
		}(c)
	}
	return out
}

func startEtcd(dir string) (*embed.Etcd, string, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	cfg := embed.NewConfig()
	cfg.Name = "flextrain-test"
	cfg.Dir = dir
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	// The tests' objects are small and short-lived: a small backend, frequent compaction.
	cfg.QuotaBackendBytes = 2 << 30
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "5m"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", errors.New("not ready within 60s")
	}
	return e, clientURL.String(), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

type credentials struct {
	tokenFile    string
	saPrivateKey string
	saPublicKey  string
	tokens       map[string]string
}

// writeCredentials writes the service-account signing key pair and a static token
// file: the admin (system:masters) and the controller manager and scheduler under
// the user names their bootstrap RBAC roles are bound to.
func writeCredentials(dir string) (*credentials, error) {
	c := &credentials{
		tokenFile:    filepath.Join(dir, "tokens.csv"),
		saPrivateKey: filepath.Join(dir, "sa.key"),
		saPublicKey:  filepath.Join(dir, "sa.pub"),
		tokens:       map[string]string{},
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	keyPEM, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		return nil, err
	}
	if err := keyutil.WriteKey(c.saPrivateKey, keyPEM); err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	pubPEM := fmt.Sprintf("-----BEGIN PUBLIC KEY-----\n%s\n-----END PUBLIC KEY-----\n", wrap64(base64.StdEncoding.EncodeToString(pubDER)))
	if err := os.WriteFile(c.saPublicKey, []byte(pubPEM), 0o600); err != nil {
		return nil, err
	}
	users := []struct{ name, user, groups string }{
		{"admin", "admin", "system:masters"},
		{"kube-controller-manager", "system:kube-controller-manager", ""},
		{"kube-scheduler", "system:kube-scheduler", ""},
	}
	var lines string
	for i, u := range users {
		b := make([]byte, 24)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		token := hex.EncodeToString(b)
		c.tokens[u.name] = token
		lines += fmt.Sprintf("%s,%s,uid-%d,%q\n", token, u.user, i, u.groups)
	}
	if err := os.WriteFile(c.tokenFile, []byte(lines), 0o600); err != nil {
		return nil, err
	}
	return c, nil
}

func wrap64(s string) string {
	out := ""
	for len(s) > 64 {
		out += s[:64] + "\n"
		s = s[64:]
	}
	return out + s
}

func writeKubeconfig(path, server string, ca []byte, user, token string) error {
	text := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: flextrain-test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: %s@flextrain-test
  context: {cluster: flextrain-test, user: %s}
current-context: %s@flextrain-test
`, server, base64.StdEncoding.EncodeToString(ca), user, token, user, user, user)
	return os.WriteFile(path, []byte(text), 0o600)
}

func startAPIServer(listener net.Listener, args []string) (*component, error) {
	s := apiserveroptions.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	s.SecureServing.Listener = listener
	s.SecureServing.BindPort = listener.Addr().(*net.TCPAddr).Port
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	return start("kube-apiserver", func(ctx context.Context) error {
		completed, err := s.Complete(ctx)
		if err != nil {
			return err
		}
		if errs := completed.Validate(); len(errs) != 0 {
			return errors.Join(errs...)
		}
		return apiserverapp.Run(ctx, completed)
	}), nil
}

func waitReady(server, token, caFile string, timeout time.Duration, signals <-chan os.Signal, apiserver *component) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: 5 * time.Second}
	var last string
	for time.Now().Before(deadline) {
		select {
		case sig := <-signals:
			return fmt.Errorf("%s received while starting", sig)
		case err := <-apiserver.done:
			apiserver.done <- err
			return fmt.Errorf("kube-apiserver stopped while starting: %v", err)
		default:
		}
		if ca, err := os.ReadFile(caFile); err == nil {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(ca)
			client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
			req, _ := http.NewRequest(http.MethodGet, server+"/readyz", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
				last = resp.Status
			} else {
				last = err.Error()
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready within %s (last answer: %s)", timeout, last)
}

// extractCA writes the CA certificates of a PEM bundle to out and returns them.
func extractCA(bundle, out string) ([]byte, error) {
	data, err := os.ReadFile(bundle)
	if err != nil {
		return nil, err
	}
	var ca []byte
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		cert, err := x509.ParseCertificate(block.Bytes)
		if err == nil && cert.IsCA {
			ca = append(ca, pem.EncodeToMemory(block)...)
		}
	}
	if len(ca) == 0 {
		return nil, fmt.Errorf("no CA certificate in %s", bundle)
	}
	return ca, os.WriteFile(out, ca, 0o644)
}

func startControllerManager(args []string) (*component, error) {
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, err
	}
	all, disabled, aliases := kcmapp.KnownControllers(), kcmapp.ControllersDisabledByDefault(), kcmapp.ControllerAliases()
	named := s.Flags(all, disabled, aliases)
	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	for _, f := range named.FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	s.ParsedFlags = &named
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	return start("kube-controller-manager", func(ctx context.Context) error {
		config, err := s.Config(ctx, all, disabled, aliases)
		if err != nil {
			return err
		}
		return kcmapp.Run(ctx, config.Complete())
	}), nil
}

func startScheduler(args []string) (*component, error) {
	opts := schedoptions.NewOptions()
	fs := pflag.NewFlagSet("kube-scheduler", pflag.ContinueOnError)
	for _, f := range opts.Flags.FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := opts.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	return start("kube-scheduler", func(ctx context.Context) error {
		cc, sched, err := schedapp.Setup(ctx, opts)
		if err != nil {
			return err
		}
		return schedapp.Run(ctx, cc, sched)
	}), nil
}
