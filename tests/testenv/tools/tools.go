//go:build tools

// Package tools pins, in this module's go.mod/go.sum, test inputs that are
// not Go programs of ours: helm (a `tool` in go.mod) is built from here, and
// the Gateway API module is required only for its CRD YAML files, which the
// build script copies from the module cache. It has its own module so that
// helm's and gateway-api's Kubernetes library versions do not mix with the
// kube-apiserver pin in ../go.mod.
package tools

import _ "sigs.k8s.io/gateway-api/apis/v1"
