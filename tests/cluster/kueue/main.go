// The Kueue manager the cluster tests run against the test control plane: Kueue's own
// controllers, scheduler and webhooks (sigs.k8s.io/kueue, the version go.mod pins),
// wired into one controller-runtime manager the way Kueue's manager wires them, minus
// what a cluster without Kueue's Deployment cannot give it:
//
//   - its webhooks are served on loopback (the config file's webhook.host/port/certDir)
//     with a certificate the test fixture makes; Kueue's own certificate management
//     names the in-cluster Service (<service>.<namespace>.svc), which the API server
//     cannot reach here, so it is off;
//   - no metrics server: Kueue's manager reads its metrics certificate from the fixed
//     path /etc/kueue/metrics/certs when its certificate management is off, and the tests
//     read no metrics;
//   - no job integrations (batch/v1 Job, JobSet, ...): FlexTrain talks to Kueue through
//     the Workload API, so Kueue must not take over the tier Jobs.
//
// Everything that decides admission (the queue and scheduler caches, the scheduler, the
// Workload, ClusterQueue, LocalQueue and ResourceFlavor controllers and webhooks) is
// Kueue's, unchanged. Configuration: Kueue's own Configuration file (--config), the
// kubeconfig from KUBECONFIG. scripts/build-kueue.sh builds this into .tools/bin/kueue.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	configapi "sigs.k8s.io/kueue/apis/config/v1beta2"
	kueue "sigs.k8s.io/kueue/apis/kueue/v1beta2"
	qcache "sigs.k8s.io/kueue/pkg/cache/queue"
	schdcache "sigs.k8s.io/kueue/pkg/cache/scheduler"
	"sigs.k8s.io/kueue/pkg/config"
	"sigs.k8s.io/kueue/pkg/constants"
	"sigs.k8s.io/kueue/pkg/controller/core"
	"sigs.k8s.io/kueue/pkg/controller/core/indexer"
	"sigs.k8s.io/kueue/pkg/scheduler"
	preemptexpectations "sigs.k8s.io/kueue/pkg/scheduler/preemption/expectations"
	"sigs.k8s.io/kueue/pkg/webhooks"
)

func main() {
	var configFile string
	flag.StringVar(&configFile, "config", "", "Kueue Configuration file (kind: Configuration, config.kueue.x-k8s.io/v1beta2)")
	zapOptions := zap.Options{}
	zapOptions.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOptions)))
	if err := run(configFile); err != nil {
		fmt.Fprintf(os.Stderr, "kueue: %v\n", err)
		os.Exit(1)
	}
}

func run(configFile string) error {
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(kueue.AddToScheme(scheme))
	utilruntime.Must(configapi.AddToScheme(scheme))

	options, cfg, err := config.Load(scheme, configFile)
	if err != nil {
		return fmt.Errorf("loading %s: %w", configFile, err)
	}
	if cfg.InternalCertManagement != nil && cfg.InternalCertManagement.Enable != nil && *cfg.InternalCertManagement.Enable {
		return errors.New("internalCertManagement.enable must be false: the webhooks serve the certificate in webhook.certDir")
	}
	config.AddWebhookSettingsTo(&options, &cfg)
	options.Metrics = metricsserver.Options{BindAddress: "0"}

	ctx := ctrl.SetupSignalHandler()
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), options)
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	if err := indexer.Setup(ctx, mgr.GetFieldIndexer()); err != nil {
		return fmt.Errorf("setting up indexes: %w", err)
	}

	expectations := preemptexpectations.New()
	cache := schdcache.New(mgr.GetClient())
	requeuer := qcache.NewRequeuer()
	if err := mgr.Add(requeuer); err != nil {
		return fmt.Errorf("adding the requeuer: %w", err)
	}
	queues := qcache.NewManager(mgr.GetClient(), cache, requeuer, qcache.WithPreemptionExpectations(expectations))
	if name, err := core.SetupControllers(mgr, queues, cache, &cfg, nil, expectations, nil); err != nil {
		return fmt.Errorf("setting up controller %s: %w", name, err)
	}
	if name, err := webhooks.Setup(mgr, nil); err != nil {
		return fmt.Errorf("setting up the %s webhook: %w", name, err)
	}
	sched := scheduler.New(queues, cache, mgr.GetClient(), mgr.GetEventRecorderFor(constants.AdmissionName),
		scheduler.WithPreemptionExpectations(expectations))
	if err := mgr.Add(sched); err != nil {
		return fmt.Errorf("adding the scheduler: %w", err)
	}
	// Ready once the webhook server listens: the fixture registers the webhook
	// configurations only then.
	if err := mgr.AddReadyzCheck("webhooks", func(req *http.Request) error {
		return mgr.GetWebhookServer().StartedChecker()(req)
	}); err != nil {
		return fmt.Errorf("adding the readiness check: %w", err)
	}
	go queues.CleanUpOnContext(ctx)
	go cache.CleanUpOnContext(ctx)
	return mgr.Start(ctx)
}
