package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sync/errgroup"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// readCRDs returns every CustomResourceDefinition document found in the
// *.yaml / *.yml files of dirs (multi-document files allowed). Other kinds are
// skipped with a warning. A missing directory is an error (likely a typo).
func readCRDs(dirs []string) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	for _, dir := range dirs {
		if st, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("--crds: %w", err)
		} else if !st.IsDir() {
			return nil, fmt.Errorf("--crds %s: not a directory", dir)
		}
		var files []string
		for _, pat := range []string{"*.yaml", "*.yml"} {
			m, err := filepath.Glob(filepath.Join(dir, pat))
			if err != nil {
				return nil, err
			}
			files = append(files, m...)
		}
		sort.Strings(files)
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				return nil, err
			}
			r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
			for {
				doc, err := r.Read()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return nil, fmt.Errorf("%s: %w", file, err)
				}
				obj := map[string]any{}
				if err := yaml.Unmarshal(doc, &obj); err != nil {
					return nil, fmt.Errorf("%s: %w", file, err)
				}
				if len(obj) == 0 {
					continue // empty document
				}
				u := &unstructured.Unstructured{Object: obj}
				if u.GetKind() != "CustomResourceDefinition" {
					logf("skipping %s %q in %s: not a CustomResourceDefinition", u.GetKind(), u.GetName(), file)
					continue
				}
				out = append(out, u)
			}
		}
	}
	return out, nil
}

// applyCRDs server-side-applies the CRDs and waits until each is Established
// (its REST endpoints are served).
func applyCRDs(ctx context.Context, cfg *rest.Config, crds []*unstructured.Unstructured) error {
	if len(crds) == 0 {
		return nil
	}
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	api := client.Resource(crdGVR)
	// In parallel: the server spends most of the time per CRD building its
	// schema, and there are two cores.
	force := true
	var g errgroup.Group
	g.SetLimit(4)
	for _, crd := range crds {
		g.Go(func() error {
			body, err := crd.MarshalJSON()
			if err != nil {
				return err
			}
			_, err = api.Patch(ctx, crd.GetName(), types.ApplyPatchType, body,
				metav1.PatchOptions{FieldManager: "knit-testenv", Force: &force})
			if err != nil {
				return fmt.Errorf("applying CRD %s: %w", crd.GetName(), err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	logf("submitted %d CRDs, waiting until Established", len(crds))
	deadline := time.Now().Add(60 * time.Second)
	for _, crd := range crds {
		for {
			u, err := api.Get(ctx, crd.GetName(), metav1.GetOptions{})
			if err != nil {
				return err
			}
			var got apiextensionsv1.CustomResourceDefinition
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &got); err != nil {
				return err
			}
			if established(&got) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("CRD %s not Established after 60s", crd.GetName())
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	logf("applied %d CRDs", len(crds))
	return nil
}

func established(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}
