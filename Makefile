# netpact: see README.md. Every target works on a fresh Debian machine with Go 1.26.
SHELL     := /bin/bash
GO        ?= go
BIN       := bin/netpact
FUZZTIME  ?= 2m
# bpf2go's compiler and flags, pinned: Debian's clang 14 (apt-get install clang-14 llvm-14
# libbpf-dev; the Linux UAPI headers are vendored in bpf/headers).
export BPF_CLANG  := clang-14
export BPF_STRIP  := llvm-strip-14
export BPF_CFLAGS := -O2 -g -Wall -Werror
BENCHTIME ?= 1s

.PHONY: all build test envtest-assets e2e-local images e2e bench fuzz generate check-generate lint cross demo soak clean deps deps-demo deps-test deps-bench deps-generate deps-e2e

# The Debian packages each target needs, from the one list in internal/host/deps.sh: installed when
# missing (root and apt-get), one line per package installed; `make deps` installs everything CI uses.
HOSTDEPS := internal/host/deps.sh
deps:
	@$(HOSTDEPS) ci
deps-demo deps-test deps-bench deps-generate deps-e2e:
	@$(HOSTDEPS) $(@:deps-%=%)

all: build

build:
	$(GO) build -o $(BIN) ./cmd/netpact

# Every test: unit, semantic tables, cyclonus conformance, CLI, and (as root) the eBPF datapath
# with prog.Run and real traffic in network namespaces. CI=true turns missing prerequisites into
# failures.
# The full verbose log goes to test.log; the terminal gets package results, the cyclonus counts
# and every failure line. The run fails when it leaves a network namespace, a host veth or a pin
# under /sys/fs/bpf that was not there before (internal/host/leftovers.sh).
test: deps-test envtest-assets
	@set -o pipefail; before=$$(mktemp); internal/host/leftovers.sh snapshot $$before || exit 1; \
	KUBEBUILDER_ASSETS=$(CURDIR)/bin/envtest $(GO) test -count=1 -v -timeout 25m ./... 2>&1 | tee test.log | \
		grep -E '^(ok|FAIL|--- FAIL|--- SKIP|cyclonus|panic|\?)|^\s+[a-z0-9_]+_test\.go:[0-9]+:'; rc=$$?; \
	internal/host/leftovers.sh check $$before || rc=1; rm -f $$before; \
	skips=$$(grep -c -- '--- SKIP' test.log); echo "make test: exit $$rc, $$skips skipped (test.log)"; exit $$rc

# kube-apiserver and etcd for the controller tests (internal/kubetest), built from source from the
# modules that build the kind node image (kind/images/k8s, kind/images/etcd): the same versions,
# offline. Rebuilt only when those modules change.
ENVTEST_INPUTS := kind/images/k8s/go.mod kind/images/k8s/go.sum kind/images/etcd/go.mod kind/images/etcd/go.sum
envtest-assets: bin/envtest/.stamp
bin/envtest/.stamp: $(ENVTEST_INPUTS)
	@mkdir -p bin/envtest
	cd kind/images/k8s && CGO_ENABLED=0 $(GO) build -trimpath -o $(CURDIR)/bin/envtest/ k8s.io/kubernetes/cmd/kube-apiserver
	cd kind/images/etcd && CGO_ENABLED=0 $(GO) build -trimpath -o $(CURDIR)/bin/envtest/etcd go.etcd.io/etcd/server/v3
	@touch $@

# The Ginkgo suite's local-node specs, in parallel processes (make test runs them too).
e2e-local:
	$(GO) tool ginkgo -p --label-filter=local ./e2e/

# Every image a kind cluster needs, built offline on this machine (kind/images.sh): reused when
# their inputs have not changed. bin/images.list names them for netpact kind create and the suite.
images:
	@mkdir -p bin
	@eval "$$(kind/dockerd.sh start)" && kind/images.sh build > bin/images.list.tmp && mv bin/images.list.tmp bin/images.list
	@cat bin/images.list

# The Ginkgo suite's kind specs: build missing images, create a 3-node kind cluster with netpact
# as the CNI, run seed 002 on it, delete the cluster and kind's network, and stop the private
# dockerd if this target started it. E2E_RETAIN=1 keeps cluster and dockerd (and reuses them).
E2E_RETAIN ?= 0
e2e:
	@set -uo pipefail; start=$$(date +%s); mkdir -p bin; rm -f bin/e2e-failures.txt; \
	if kind/dockerd.sh status; then own=0; else own=1; fi; \
	eval "$$(kind/dockerd.sh start)" || exit 1; \
	kind/images.sh build > bin/images.list.tmp && mv bin/images.list.tmp bin/images.list && \
	E2E_RETAIN=$(E2E_RETAIN) $(GO) tool ginkgo -v --label-filter=kind --junit-report=e2e-kind.xml --output-dir=bin ./e2e/; \
	rc=$$?; \
	if [ "$(E2E_RETAIN)" != 1 ]; then \
		$(GO) run ./cmd/netpact kind delete --name netpact-e2e --kubeconfig bin/kind-netpact-e2e.kubeconfig || rc=1; \
		if [ $$own = 1 ]; then kind/dockerd.sh stop; fi; \
	fi; \
	if [ $$rc != 0 ] && [ -s bin/e2e-failures.txt ]; then \
		echo "make e2e: what failed, and the cluster at that moment (bin/e2e-failures.txt):"; cat bin/e2e-failures.txt; \
	fi; \
	echo "make e2e: exit $$rc after $$(( $$(date +%s) - start ))s"; exit $$rc

bench: deps-bench
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./policy/
	$(GO) test -run '^$$' -bench 'Verdict' -benchtime $(BENCHTIME) ./enforcer/datapath/
	$(GO) test -run '^$$' -bench 'Traffic|ServiceConnect' -benchtime 1x ./enforcer/datapath/
	$(GO) test -run '^$$' -bench 'FlowEvents' -benchtime 1x ./enforcer/datapath/
	$(GO) test -run '^$$' -bench 'NodeFlowEvents' -benchtime 1x ./enforcer/
	$(GO) test -run '^$$' -bench 'Matrix486' -benchtime 3x ./scenarios/
	$(GO) test -run '^$$' -bench 'PushToEnforced' -benchtime 20x ./reconciler/
	$(GO) test -run '^$$' -bench 'L7Proxy' -benchtime 1x ./enforcer/localnode/
	$(GO) test -run '^$$' -bench 'KafkaProduce' -benchtime 1x ./enforcer/localnode/
	$(GO) test -run '^$$' -bench 'DNSProxy' -benchtime 20000x ./enforcer/dnsproxy/

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME) ./policy/

# Regenerates generated code (bpf2go output once the datapath lands); check-generate fails when
# the committed output differs from what generate produces.
generate: deps-generate
	$(GO) generate ./...

check-generate: generate
	@git diff --exit-code --stat -- . || (echo "generated files drifted: run make generate and commit" && exit 1)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfel.go$$')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@if git grep -nE '^(<<<<<<<|>>>>>>>) ' -- . ; then echo "merge conflict markers committed"; exit 1; fi
	$(GO) vet ./...

# The client commands for macOS and Windows: the node commands need Linux (docs/cli.md).
cross:
	CGO_ENABLED=0 GOOS=darwin GOARCH=arm64 $(GO) build -o /dev/null ./cmd/netpact
	CGO_ENABLED=0 GOOS=darwin GOARCH=amd64 $(GO) build -o /dev/null ./cmd/netpact
	CGO_ENABLED=0 GOOS=windows GOARCH=amd64 $(GO) build -o /dev/null ./cmd/netpact

# The product on this machine (as root): validate the example policies, print the matrix the
# engine predicts for the seed articles' cluster, then run every seed scenario on a local node of
# network namespaces through the eBPF datapath: the matrices before and after each policy, with
# flow lines naming the rule that decided; the node is torn down afterwards.
demo: deps-demo build
	./$(BIN) validate policies/
	./$(BIN) predict --cluster docs/examples/cluster.yaml policies/
	@set -uo pipefail; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; rc=0; \
	./$(BIN) test --summary "$$tmp/summary" scenarios/seeds/ scenarios/l7/ || rc=1; \
	echo "== GitOps: a Git repository made from policies/, reconciled onto a local node"; \
	cp -r policies "$$tmp/repo" && git -C "$$tmp/repo" init -q -b main && git -C "$$tmp/repo" add -A && \
	git -C "$$tmp/repo" -c user.name=demo -c user.email=demo@netpact.io commit -q -m "seed policies" && \
	./$(BIN) reconciler local --once --source "file://$$tmp/repo" --branch main --path . \
		--node docs/examples/cluster.yaml --status-file "$$tmp/status.json" >/dev/null || rc=1; \
	echo; echo "== summary: the seed scenarios on a local node (matrices above, a failing step's tables below)"; \
	cat "$$tmp/summary" 2>/dev/null || echo "no summary: netpact test did not finish"; \
	echo "== the reconciler's status"; ./$(BIN) status --status-file "$$tmp/status.json" || rc=1; \
	echo "make demo: exit $$rc"; exit $$rc

# The seed and L7 scenarios SOAK_N times in a row on a local node while Go compiles netpact from
# an empty build cache in a loop (both cores busy): the wrong cells and failed steps of each run
# and in total, the time and how busy the CPUs were (internal/host/soak.sh). Exit 1 on any.
SOAK_N ?= 30
soak: deps-demo build
	@internal/host/soak.sh ./$(BIN) $(SOAK_N)

clean:
	rm -rf bin
