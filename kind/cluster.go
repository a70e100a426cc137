// Package kind brings up and tears down kind clusters with netpact as the CNI, through the
// sigs.k8s.io/kind Go API, from images built on this machine (kind/images.sh): nothing is pulled.
package kind

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/nodes"
	"sigs.k8s.io/kind/pkg/cluster/nodeutils"
	kindcmd "sigs.k8s.io/kind/pkg/cmd"

	"github.com/netpact/netpact/internal/kubeapply"
)

// DefaultName is the cluster's name unless told otherwise.
const DefaultName = "netpact"

// PrivateDockerSocket is where kind/dockerd.sh runs the private Docker engine.
const PrivateDockerSocket = "/run/netpact-docker/docker.sock"

// Images are the images a cluster is made from and loaded with.
type Images struct {
	// Node is the kind node image (with the control-plane images inside).
	Node string
	// Netpact is the enforcer DaemonSet's image.
	Netpact string
	// Workloads are loaded into the workers as well (the seed's flask, postgres, debug images).
	Workloads []string
	// GitServer is the GitOps suite's Git server image (among Workloads too).
	GitServer string
}

// ReadImages reads "role=image" lines, as `kind/images.sh list` prints them.
func ReadImages(path string) (Images, error) {
	f, err := os.Open(path)
	if err != nil {
		return Images{}, fmt.Errorf("images: %w (kind/images.sh list > %s)", err, path)
	}
	defer f.Close()
	var im Images
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		role, ref, ok := strings.Cut(text, "=")
		if !ok || ref == "" {
			return Images{}, fmt.Errorf("%s:%d: want role=image, got %q", path, line, text)
		}
		switch role {
		case "node":
			im.Node = ref
		case "netpact":
			im.Netpact = ref
		case "gitserver":
			im.GitServer = ref
			im.Workloads = append(im.Workloads, ref)
		default:
			im.Workloads = append(im.Workloads, ref)
		}
	}
	if err := sc.Err(); err != nil {
		return Images{}, fmt.Errorf("images: %w", err)
	}
	if im.Node == "" || im.Netpact == "" {
		return Images{}, fmt.Errorf("%s: node= and netpact= images are required", path)
	}
	return im, nil
}

// Options describe a cluster.
type Options struct {
	Name string
	// Config is the kind cluster configuration file (kind/cluster.yaml).
	Config string
	// Manifest is netpact's install manifest: a file, or a directory (deploy/) whose crds/*.yaml
	// and then *.yaml are applied; NETPACT_IMAGE in them is replaced by Images.Netpact.
	Manifest string
	Images   Images
	// Kubeconfig is where the cluster's kubeconfig is written.
	Kubeconfig string
	// Retain keeps the nodes of a cluster that failed to come up.
	Retain bool
	// LogsDir receives kind's logs of every node when creation fails.
	LogsDir string
	// Wait bounds the wait for nodes and kube-system pods; 5 minutes when zero.
	Wait time.Duration
	Out  io.Writer
}

// Cluster is a running cluster.
type Cluster struct {
	Name       string
	Kubeconfig string
	Config     *rest.Config
	Client     kubernetes.Interface
}

// UsePrivateDocker points DOCKER_HOST at the private engine when it is unset and the engine runs.
func UsePrivateDocker() {
	if os.Getenv("DOCKER_HOST") != "" {
		return
	}
	if _, err := os.Stat(PrivateDockerSocket); err == nil {
		os.Setenv("DOCKER_HOST", "unix://"+PrivateDockerSocket)
	}
}

func provider() *cluster.Provider {
	return cluster.NewProvider(cluster.ProviderWithDocker(), cluster.ProviderWithLogger(kindcmd.NewLogger()))
}

func (o *Options) defaults() {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Wait == 0 {
		o.Wait = 5 * time.Minute
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
}

// Create brings a cluster up: kind creates the nodes from our node image, the images are loaded
// into every node, netpact's DaemonSet is applied, and Create returns once every node and every
// kube-system pod is Ready. A cluster that fails to come up has its logs collected into LogsDir
// and is deleted unless Retain is set.
func Create(ctx context.Context, o Options) (c *Cluster, err error) {
	o.defaults()
	UsePrivateDocker()
	p := provider()
	stage := func(what string, f func() error) error {
		start := time.Now()
		fmt.Fprintf(o.Out, "kind: %s ...\n", what)
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		fmt.Fprintf(o.Out, "kind: %s done in %.1fs\n", what, time.Since(start).Seconds())
		return nil
	}
	count, err := nodeCount(o.Config)
	if err != nil {
		return nil, err
	}
	if exists, err := Exists(o.Name); err != nil {
		return nil, fmt.Errorf("list clusters: %w", err)
	} else if exists {
		return nil, fmt.Errorf("a kind cluster named %s exists already (netpact kind delete --name %s)", o.Name, o.Name)
	}
	// kind keeps the nodes of a failed create (so their logs can be collected first); they are
	// deleted below unless Retain.
	defer func() {
		if err == nil {
			return
		}
		if o.LogsDir != "" {
			if lerr := p.CollectLogs(o.Name, o.LogsDir); lerr == nil {
				err = fmt.Errorf("%w (node logs in %s)", err, o.LogsDir)
			}
		}
		if !o.Retain {
			_ = Delete(o.Name, o.Kubeconfig)
		} else {
			err = fmt.Errorf("%w (nodes kept: netpact kind delete --name %s)", err, o.Name)
		}
	}()
	// The images go into each node's containerd while kind is still running kubeadm there: they
	// are saved meanwhile, and each node is loaded as soon as its containerd answers. Workload
	// images go to the workers only (the control plane is tainted), netpact's to every node.
	loadCtx, stopLoading := context.WithTimeout(ctx, o.Wait)
	defer stopLoading()
	loaded := make(chan error, 1)
	loadStart := time.Now()
	go func() { loaded <- loadWhenUp(loadCtx, p, o.Name, count, o.Images) }()
	err = stage(fmt.Sprintf("create cluster %q (%d nodes) from %s", o.Name, count, o.Images.Node), func() error {
		return p.Create(o.Name, cluster.CreateWithConfigFile(o.Config), cluster.CreateWithNodeImage(o.Images.Node),
			cluster.CreateWithRetain(true), cluster.CreateWithKubeconfigPath(o.Kubeconfig),
			cluster.CreateWithDisplayUsage(false), cluster.CreateWithDisplaySalutation(false))
	})
	if err != nil {
		stopLoading()
		<-loaded
		return nil, err
	}
	if err := stage("finish loading the images into the nodes", func() error { return <-loaded }); err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Out, "kind: images saved and loaded %.1fs after create began\n", time.Since(loadStart).Seconds())
	cfg, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	objs, err := ReadManifests(o.Manifest, o.Images.Netpact)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Wait)
	defer cancel()
	if err := stage("apply netpact (CNI and enforcer DaemonSet)", func() error {
		a, err := kubeapply.New(cfg)
		if err != nil {
			return err
		}
		return a.Apply(ctx, objs)
	}); err != nil {
		return nil, err
	}
	if err := stage(fmt.Sprintf("wait for %d nodes Ready", count), func() error {
		return kubeapply.WaitNodesReady(ctx, client, count)
	}); err != nil {
		return nil, err
	}
	if err := stage("wait for every kube-system pod Ready", func() error {
		if err := kubeapply.WaitWorkloads(ctx, client, objs); err != nil {
			return err
		}
		return kubeapply.WaitPodsReady(ctx, client, "kube-system")
	}); err != nil {
		return nil, err
	}
	return &Cluster{Name: o.Name, Kubeconfig: o.Kubeconfig, Config: cfg, Client: client}, nil
}

// nodeCount counts the nodes a kind configuration asks for.
func nodeCount(config string) (int, error) {
	raw, err := os.ReadFile(config)
	if err != nil {
		return 0, fmt.Errorf("kind config: %w", err)
	}
	n := 0
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "- role:") {
			n++
		}
	}
	if n == 0 {
		n = 1
	}
	return n, nil
}

// saveImages writes one `docker save` archive of the images into a new temporary directory.
func saveImages(images []string) (string, error) {
	dir, err := os.MkdirTemp("", "netpact-images")
	if err != nil {
		return "", err
	}
	archive := filepath.Join(dir, "images.tar")
	if out, err := exec.Command("docker", append([]string{"save", "-o", archive}, images...)...).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("docker save: %w: %s", err, out)
	}
	return archive, nil
}

// loadWhenUp saves the images, waits for the cluster's n node containers and loads each node as
// soon as its containerd answers: every image into workers, netpact's into control planes (and
// everything into a cluster without workers).
func loadWhenUp(ctx context.Context, p *cluster.Provider, name string, n int, im Images) error {
	all, err := saveImages(append([]string{im.Netpact}, im.Workloads...))
	if err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Dir(all))
	onlyNetpact, err := saveImages([]string{im.Netpact})
	if err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Dir(onlyNetpact))
	var list []nodes.Node
	for {
		list, _ = p.ListInternalNodes(name)
		if len(list) >= n {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("load images: %d of %d nodes started: %w", len(list), n, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	workers := false
	for _, node := range list {
		if role, _ := node.Role(); role == "worker" {
			workers = true
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(list))
	for i, node := range list {
		archive := all
		if role, _ := node.Role(); workers && role != "worker" {
			archive = onlyNetpact
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for node.CommandContext(ctx, "ctr", "version").Run() != nil {
				select {
				case <-ctx.Done():
					errs[i] = fmt.Errorf("node %s: containerd never answered: %w", node.String(), ctx.Err())
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
			errs[i] = loadArchive(node, archive)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func loadArchive(node nodes.Node, archive string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := nodeutils.LoadImageArchive(node, f); err != nil {
		return fmt.Errorf("node %s: %w", node.String(), err)
	}
	return nil
}

// LoadImages loads images from the Docker engine into every node of a running cluster, as `kind
// load docker-image` does: one `docker save` archive, imported on each node.
func LoadImages(name string, images []string) error {
	UsePrivateDocker()
	list, err := provider().ListInternalNodes(name)
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	if len(list) == 0 {
		return fmt.Errorf("cluster %q has no nodes", name)
	}
	archive, err := saveImages(images)
	if err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Dir(archive))
	var wg sync.WaitGroup
	errs := make([]error, len(list))
	for i, node := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = loadArchive(node, archive)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Delete deletes the cluster's external hosts, its nodes and its kubeconfig entry, then kind's "kind" Docker network
// when no container uses it any more (kind keeps it).
func Delete(name, kubeconfig string) error {
	UsePrivateDocker()
	// The external hosts first: the kind network cannot go while a container uses it.
	_ = RemoveExternals(name)
	if err := provider().Delete(name, kubeconfig); err != nil {
		return fmt.Errorf("delete cluster %s: %w", name, err)
	}
	out, err := exec.Command("docker", "network", "inspect", "-f", "{{len .Containers}}", "kind").Output()
	if err != nil {
		return nil // no network
	}
	if strings.TrimSpace(string(out)) != "0" {
		return nil // another cluster still uses it
	}
	if out, err := exec.Command("docker", "network", "rm", "kind").CombinedOutput(); err != nil {
		return fmt.Errorf("remove the kind network: %w: %s", err, out)
	}
	return nil
}

// Exists reports whether a cluster of that name has nodes.
func Exists(name string) (bool, error) {
	UsePrivateDocker()
	names, err := provider().List()
	if err != nil {
		return false, err
	}
	for _, n := range names {
		if n == name {
			return true, nil
		}
	}
	return false, nil
}

// ReadManifests decodes a manifest file, or a directory's crds/*.yaml then *.yaml, with
// NETPACT_IMAGE replaced by image.
func ReadManifests(path, image string) ([]*unstructured.Unstructured, error) {
	files := []string{path}
	if st, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("netpact manifest: %w", err)
	} else if st.IsDir() {
		crds, _ := filepath.Glob(filepath.Join(path, "crds", "*.yaml"))
		rest, _ := filepath.Glob(filepath.Join(path, "*.yaml"))
		sort.Strings(crds)
		sort.Strings(rest)
		files = append(crds, rest...)
		if len(rest) == 0 {
			return nil, fmt.Errorf("netpact manifest: no *.yaml in %s", path)
		}
	}
	var out []*unstructured.Unstructured
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("netpact manifest: %w", err)
		}
		objs, err := kubeapply.Decode(f, bytes.ReplaceAll(raw, []byte("NETPACT_IMAGE"), []byte(image)))
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
	return out, nil
}
