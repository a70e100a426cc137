// Package e2e holds netpact's Ginkgo suites: Label("local") runs every scenario file on local
// nodes of network namespaces through the eBPF datapath; Label("kind") brings up one kind cluster
// with netpact as the CNI and runs the seed 002 workloads and scenario on it (make e2e). The kind
// specs run only when the label filter names kind.
package e2e

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"sort"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/netpact/netpact/enforcer/localnode"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/scenarios"
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "netpact e2e")
}

// scenarioFiles are the scenario files the local suite runs, one table entry each.
var scenarioFiles = func() []string {
	files, _ := filepath.Glob(filepath.Join("..", "scenarios", "seeds", "*.yaml"))
	l7, _ := filepath.Glob(filepath.Join("..", "scenarios", "l7", "*.yaml"))
	files = append(files, l7...)
	sort.Strings(files)
	return files
}()

// suiteNode is what process 1 makes once and hands to every process: the pods of every scenario,
// in named network namespaces (under /run/netns) so that any process can enter them.
type suiteNode struct {
	// Pods maps scenario file -> namespace/name -> pod.
	Pods map[string]map[string]*podnet.Pod
}

var node suiteNode

// suiteData is what process 1 hands to every process.
type suiteData struct {
	Local suiteNode
	Kind  *kindSuite
}

// releaseID frees process 1's run id after the suite.
var releaseID = func() {}

var _ = SynchronizedBeforeSuite(func() []byte {
	data := suiteData{}
	if kindSelected() {
		data.Kind = setUpKind()
	}
	if Label("local").MatchesLabelFilter(GinkgoLabelFilter()) {
		data.Local = setUpLocal()
	}
	raw, err := json.Marshal(data)
	Expect(err).NotTo(HaveOccurred())
	return raw
}, func(raw []byte) {
	var data suiteData
	Expect(json.Unmarshal(raw, &data)).To(Succeed())
	node, kindData = data.Local, data.Kind
})

// setUpLocal makes the pods of every scenario file once.
func setUpLocal() suiteNode {
	testenv.RequireBPF(GinkgoT())
	testenv.RequireCommand(GinkgoT(), "ip", "iproute2")
	Expect(podnet.PrepareHost()).To(Succeed())
	made := suiteNode{Pods: map[string]map[string]*podnet.Pod{}}
	id, release, err := localnode.ClaimRunID()
	Expect(err).NotTo(HaveOccurred())
	releaseID = release
	for _, f := range scenarioFiles {
		sc, err := scenarios.LoadFile(f)
		Expect(err).NotTo(HaveOccurred())
		made.Pods[f] = map[string]*podnet.Pod{}
		for _, p := range sc.Pods {
			n := len(made.Pods[f]) + 10*len(made.Pods)
			pod, err := localnode.MakePod(p.Key(), id, n)
			Expect(err).NotTo(HaveOccurred(), "make pod %s of %s", p.Key(), f)
			made.Pods[f][p.Key()] = pod
		}
	}
	return made
}

var _ = SynchronizedAfterSuite(func() {}, func() {
	for _, pods := range node.Pods {
		for _, p := range pods {
			p.Delete()
		}
	}
	releaseID()
	tearDownKind()
})

var _ = Describe("scenarios on a local node", Label("local"), func() {
	entries := []TableEntry{}
	for _, f := range scenarioFiles {
		entries = append(entries, Entry(filepath.Base(f), f))
	}
	DescribeTable("scenario file", func(file string) {
		sc, err := scenarios.LoadFile(file)
		Expect(err).NotTo(HaveOccurred())
		backend := scenarios.NewLocal(scenarios.LocalOptions{Pods: node.Pods[file]})
		res := (&scenarios.Runner{Backend: backend}).Run(sc)
		var report bytes.Buffer
		scenarios.Print(&report, []*scenarios.Result{res}, false)
		GinkgoWriter.Print(report.String())
		Expect(res.Failed()).To(BeFalse(), "scenario %s failed:\n%s", sc.Name, report.String())
	}, entries)
})
