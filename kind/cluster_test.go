package kind

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadImages(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "images.list")
	os.WriteFile(f, []byte("node=netpact/kind-node:v1.34.2-abc\nflask=netpact/flask:1\n\n# comment\npostgres=netpact/postgres:2\nnetpact=netpact/netpact:3\n"), 0o644)
	im, err := ReadImages(f)
	if err != nil {
		t.Fatal(err)
	}
	if im.Node != "netpact/kind-node:v1.34.2-abc" || im.Netpact != "netpact/netpact:3" ||
		strings.Join(im.Workloads, ",") != "netpact/flask:1,netpact/postgres:2" {
		t.Fatalf("images %+v", im)
	}

	os.WriteFile(f, []byte("node=netpact/kind-node:1\n7 images in the node's containerd\n"), 0o644)
	if _, err := ReadImages(f); err == nil || !strings.Contains(err.Error(), "images.list:2: want role=image") {
		t.Fatalf("a stray line must be named with its line: %v", err)
	}
	os.WriteFile(f, []byte("flask=netpact/flask:1\n"), 0o644)
	if _, err := ReadImages(f); err == nil || !strings.Contains(err.Error(), "node= and netpact= images are required") {
		t.Fatalf("missing node image: %v", err)
	}
	if _, err := ReadImages(filepath.Join(dir, "none")); err == nil || !strings.Contains(err.Error(), "kind/images.sh list") {
		t.Fatalf("missing file must say how to make it: %v", err)
	}
}

func TestNodeCount(t *testing.T) {
	n, err := nodeCount(filepath.Join("..", "kind", "cluster.yaml"))
	if err != nil || n != 3 {
		t.Fatalf("kind/cluster.yaml: %d nodes, %v", n, err)
	}
}
