package main

import (
	"os/signal"
	"syscall"
	_ "time/tzdata" // as in upstream main packages: CronJob time zones

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

// components are the upstream commands this binary can run as a child
// process (`knit-testenv kube-apiserver --flag...`). Each runs in its own
// process because both keep process-global state (flags, feature gates,
// metrics registries, signal handlers) exactly as in their own binaries.
var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
}

// runComponent is the main function of a child process.
func runComponent(name string, args []string) int {
	// Our stdout/stderr is a pipe to the supervisor. If the supervisor is
	// SIGKILLed, a log write must not kill us with SIGPIPE before orphanGuard
	// has removed the supervisor's temp dir.
	signal.Ignore(syscall.SIGPIPE)
	orphanGuard()
	cmd := components[name]()
	cmd.SetArgs(args)
	return cli.Run(cmd)
}
