#!/usr/bin/env bash
# Every image a netpact kind cluster needs, built on this machine from the Go module proxy and
# Debian's packages: nothing is pulled from a container registry.
#
#   kind/images.sh build     build what is missing (each image is tagged with a hash of its inputs
#                            and reused when that tag exists), then print the image list
#   kind/images.sh list      print the image references the current inputs name (one per line,
#                            "role=image"), without building
#
# Images:
#   netpact/debian      Debian bookworm minbase from debootstrap (docker import); the base of the others
#   netpact/kind-node   the kind node: systemd, Debian's containerd/runc/CNI plugins, kubelet/kubeadm/
#                       kubectl, and every control-plane image imported into its containerd
#   netpact/flask       the seed 002 Flask app (python3-flask, python3-prometheus-client, psycopg2)
#   netpact/postgres    Debian's PostgreSQL
#   netpact/debug       curl, nc, psql, dig
#   netpact/netpact     the static netpact binary (enforcer DaemonSet and CNI plugin, GitOps controller)
#   netpact/gitserver   Debian's git and the netpact binary: the GitOps suite's Git server (netpact git-server)
#
# The Kubernetes version is pinned in kind/images/k8s/go.mod, etcd and CoreDNS in theirs; the tags
# the control-plane images carry are the ones `kubeadm config images list` prints.
# Needs the private dockerd (kind/dockerd.sh start); DOCKER_HOST is taken from it when unset.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${NETPACT_KIND_CACHE:-/var/cache/netpact-kind}
SUITE=bookworm
: "${DOCKER_HOST:=$("$ROOT/kind/dockerd.sh" env | sed 's/^export DOCKER_HOST=//')}"
export DOCKER_HOST

K8S_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$ROOT/kind/images/k8s/go.mod")
KIND_VERSION=$(awk '$1 == "sigs.k8s.io/kind" {print $2}' "$ROOT/go.mod")

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# stage NAME CMD...: runs a stage and says how long it took; its output goes to stderr (stdout is
# the image list).
stage() {
	local name=$1 start end
	shift
	log "$name ..."
	start=$EPOCHREALTIME
	"$@" >&2
	end=$EPOCHREALTIME
	log "$name done in $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}')s"
}

# hash_of FILES...: a short hash of the named files' contents and names.
hash_of() {
	(
		cd "$ROOT"
		for f in "$@"; do
			printf '%s\n' "$f"
			cat "$f"
		done
	) | sha256sum | cut -c1-12
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# mirror: the Debian mirror this machine's apt uses.
mirror() {
	local m=""
	if [ -f /etc/apt/sources.list.d/debian.sources ]; then
		m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
	fi
	if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
		m=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list)
	fi
	[ -n "$m" ] || { echo "no Debian mirror in /etc/apt/sources.list{,.d/debian.sources}" >&2; exit 1; }
	echo "$m"
}

# --- tags -----------------------------------------------------------------------------------------

BASE_HASH=$(echo "debootstrap $SUITE minbase ca-certificates, apt without recommends/docs, v1" | sha256sum | cut -c1-12)
BASE=netpact/debian:$SUITE-$BASE_HASH

k8s_inputs=(kind/images.sh kind/images/k8s/go.mod kind/images/k8s/go.sum kind/images/etcd/go.mod
	kind/images/etcd/go.sum kind/images/coredns/go.mod kind/images/coredns/go.sum kind/images/pause/main.go
	kind/images/node/Dockerfile kind/images/node/containerd.toml kind/images/node/default-storage.yaml
	kind/images/kube-proxy/Dockerfile go.mod)
NODE=netpact/kind-node:$K8S_VERSION-$(hash_of "${k8s_inputs[@]}")
# Workload images follow their build context and the base.
ctx_hash() { (cd "$ROOT" && { echo "$BASE"; find "$1" -type f | sort | xargs sha256sum; } | sha256sum | cut -c1-12); }
FLASK=netpact/flask:$(ctx_hash kind/images/flask)
POSTGRES=netpact/postgres:$(ctx_hash kind/images/postgres)
DEBUG=netpact/debug:$(ctx_hash kind/images/debug)
# The netpact image follows the Go sources of the binary (tests left out).
netpact_hash() {
	(cd "$ROOT" && git ls-files -co --exclude-standard -- '*.go' go.mod go.sum '*.o' kind/images/netpact/Dockerfile |
		grep -v -e '^kind/images/' -e '_test\.go$' | sort | xargs sha256sum; echo "$BASE"; sha256sum kind/images/netpact/Dockerfile) |
		sha256sum | cut -c1-12
}
NETPACT=netpact/netpact:$(netpact_hash)
# The Git server of the GitOps suite: the same binary, with Debian's git.
GITSERVER=netpact/gitserver:$( (netpact_hash; ctx_hash kind/images/gitserver) | sha256sum | cut -c1-12)

list() {
	cat <<EOF
node=$NODE
flask=$FLASK
postgres=$POSTGRES
debug=$DEBUG
netpact=$NETPACT
gitserver=$GITSERVER
EOF
}

# --- base -----------------------------------------------------------------------------------------

build_base() {
	local dir
	dir=$(mktemp -d "$CACHE/rootfs.XXXXXX")
	mkdir -p "$CACHE/debs"
	debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include=ca-certificates \
		"$SUITE" "$dir" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 ||
		{ tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$dir"; exit 1; }
	# apt inside image builds: the mirror and updates, no recommends, no documentation.
	printf 'deb %s %s main\ndeb %s %s-updates main\n' "$(mirror)" "$SUITE" "$(mirror)" "$SUITE" >"$dir/etc/apt/sources.list"
	printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$dir/etc/apt/apt.conf.d/90netpact"
	printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
		>"$dir/etc/dpkg/dpkg.cfg.d/90netpact"
	rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
	tar -C "$dir" -c . | docker import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
	rm -rf "$dir"
}

# docker_build TAG DIR [extra build args...]: builds a Dockerfile on top of the base; the build's
# RUN steps reach Debian's mirror through the host network.
docker_build() {
	local tag=$1 dir=$2
	shift 2
	docker build -q --network host --build-arg "BASE=$BASE" "$@" -t "$tag" "$dir" >/dev/null \
		2> >(grep -v -e DEPRECATED -e buildx -e BuildKit -e '^ *$' >&2)
}

# --- binaries -------------------------------------------------------------------------------------

go_build_k8s() {
	local out=$1
	(cd "$ROOT/kind/images/k8s" && CGO_ENABLED=0 go build -trimpath \
		-ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean" \
		-o "$out/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubeadm \
		k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet)
}

go_build_etcd() {
	(cd "$ROOT/kind/images/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/etcd" go.etcd.io/etcd/server/v3)
}

go_build_coredns() {
	(cd "$ROOT/kind/images/coredns" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/coredns" github.com/coredns/coredns)
}

go_build_pause() {
	(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/pause" ./kind/images/pause)
}

# static_image TAG BINARY ENTRYPOINT_JSON: an image of one static binary (and /tmp, /etc/passwd).
static_image() {
	local tag=$1 bin=$2 entry=$3 dir
	dir=$(mktemp -d "$CACHE/static.XXXXXX")
	mkdir -p "$dir/usr/local/bin" "$dir/tmp" "$dir/etc"
	chmod 1777 "$dir/tmp"
	cp "$bin" "$dir/usr/local/bin/"
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$dir/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
	tar -C "$dir" -c . | docker import --change "ENTRYPOINT $entry" \
		--change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' - "$tag" >/dev/null
	rm -rf "$dir"
}

# --- node -----------------------------------------------------------------------------------------

build_node() {
	local work bin kindsrc images pause_tag tmp cid
	work=$(mktemp -d "$CACHE/node.XXXXXX")
	bin="$work/bin"
	mkdir -p "$bin"
	stage "build Kubernetes $K8S_VERSION binaries from the k8s.io/kubernetes module" go_build_k8s "$bin"
	stage "build etcd from go.etcd.io/etcd/server/v3" go_build_etcd "$bin"
	stage "build CoreDNS from github.com/coredns/coredns" go_build_coredns "$bin"
	stage "build pause" go_build_pause "$bin"

	# The images kubeadm will ask for, exactly as it names them.
	mapfile -t images < <("$bin/kubeadm" config images list --kubernetes-version "$K8S_VERSION")
	log "kubeadm asks for: ${images[*]}"
	for ref in "${images[@]}"; do
		case "$ref" in
		*/kube-proxy:*) ;;
		*/kube-*:*)
			local name=${ref##*/}
			name=${name%%:*}
			stage "image $ref" static_image "$ref" "$bin/$name" "[\"/usr/local/bin/$name\"]"
			;;
		*/etcd:*) stage "image $ref" static_image "$ref" "$bin/etcd" '["/usr/local/bin/etcd"]' ;;
		*/coredns:*) stage "image $ref" static_image "$ref" "$bin/coredns" '["/usr/local/bin/coredns"]' ;;
		*/pause:*) pause_tag=$ref; stage "image $ref" static_image "$ref" "$bin/pause" '["/usr/local/bin/pause"]' ;;
		*) echo "kubeadm asks for an image this script does not know: $ref" >&2; exit 1 ;;
		esac
	done
	local proxy_ref
	proxy_ref=$(printf '%s\n' "${images[@]}" | grep '/kube-proxy:')
	mkdir -p "$work/kube-proxy"
	cp "$ROOT/kind/images/kube-proxy/Dockerfile" "$bin/kube-proxy" "$work/kube-proxy/"
	stage "image $proxy_ref (Debian, nftables and iptables)" docker_build "$proxy_ref" "$work/kube-proxy"

	# The node's build context: kind's own node files from the kind module, Debian packages, our
	# containerd configuration, and the Kubernetes binaries the node runs itself.
	kindsrc=$(cd "$ROOT" && go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | awk -F'"' '/"Dir"/ {print $4}')/images/base/files
	mkdir -p "$work/ctx"
	cp -r "$kindsrc/." "$work/ctx/files/"
	chmod -R u+w "$work/ctx/files"
	cp "$ROOT/kind/images/node/Dockerfile" "$ROOT/kind/images/node/default-storage.yaml" "$work/ctx/"
	sed -e "s|@PAUSE@|$pause_tag|" "$ROOT/kind/images/node/containerd.toml" >"$work/ctx/containerd.toml"
	cp "$bin/kubelet" "$bin/kubeadm" "$bin/kubectl" "$work/ctx/"
	echo "$K8S_VERSION" >"$work/ctx/version"
	tmp=netpact/kind-node-build:$$
	stage "node image: Debian packages and kind's node files" docker_build "$tmp" "$work/ctx"

	# Import the control-plane images into the node's containerd, then commit the node.
	stage "save control-plane images" docker save -o "$work/images.tar" "${images[@]}"
	cid=$(docker run -d --privileged --entrypoint sleep -v "$work/images.tar:/images.tar:ro" "$tmp" infinity)
	import_images() {
		docker exec "$cid" bash -c '
			set -e
			containerd >/var/log/containerd-build.log 2>&1 &
			for _ in $(seq 1 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
			ctr -n k8s.io images import --all-platforms --no-unpack /images.tar >/dev/null
			echo "$(ctr -n k8s.io images list -q | grep -vc "^sha256:") images in the node'"'"'s containerd"
			kill %1; wait || true
			rm -rf /var/log/containerd-build.log /tmp/*'
	}
	stage "import control-plane images into the node's containerd" import_images
	# commit cannot set STOPSIGNAL: a one-line build on top of the commit does.
	finish() {
		docker commit "$cid" "$tmp-imported" >/dev/null
		mkdir -p "$work/final"
		printf 'FROM %s\nENV container=docker\nSTOPSIGNAL SIGRTMIN+3\nENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]\nCMD []\n' \
			"$tmp-imported" >"$work/final/Dockerfile"
		docker build -q -t "$NODE" "$work/final" >/dev/null 2> >(grep -v -e DEPRECATED -e buildx -e BuildKit -e '^ *$' >&2)
	}
	stage "commit $NODE" finish
	docker rm -f "$cid" >/dev/null
	docker rmi "$tmp" "$tmp-imported" >/dev/null
	docker rmi "${images[@]}" >/dev/null || true
	rm -rf "$work"
}

# --- workloads ------------------------------------------------------------------------------------

build_netpact() {
	local work
	work=$(mktemp -d "$CACHE/netpact.XXXXXX")
	(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/netpact" ./cmd/netpact)
	cp "$ROOT/kind/images/netpact/Dockerfile" "$work/"
	have_image "$NETPACT" || docker_build "$NETPACT" "$work"
	cp "$ROOT/kind/images/gitserver/Dockerfile" "$work/"
	have_image "$GITSERVER" || docker_build "$GITSERVER" "$work"
	rm -rf "$work"
}

build() {
	mkdir -p "$CACHE"
	"$ROOT/internal/host/deps.sh" e2e >&2
	local need=0
	for img in "$NODE" "$FLASK" "$POSTGRES" "$DEBUG" "$NETPACT" "$GITSERVER"; do
		if have_image "$img"; then log "reuse $img"; else need=1; fi
	done
	if [ $need = 1 ] && ! have_image "$BASE"; then
		stage "base $BASE (debootstrap $SUITE minbase)" build_base
	fi
	have_image "$NODE" || stage "node image $NODE" build_node
	have_image "$FLASK" || stage "image $FLASK" docker_build "$FLASK" "$ROOT/kind/images/flask"
	have_image "$POSTGRES" || stage "image $POSTGRES" docker_build "$POSTGRES" "$ROOT/kind/images/postgres"
	have_image "$DEBUG" || stage "image $DEBUG" docker_build "$DEBUG" "$ROOT/kind/images/debug"
	{ have_image "$NETPACT" && have_image "$GITSERVER"; } || stage "images $NETPACT $GITSERVER" build_netpact
	prune
	list
}

# prune removes the images of earlier inputs (other tags of the same repositories).
prune() {
	local keep=" $BASE $NODE $FLASK $POSTGRES $DEBUG $NETPACT $GITSERVER " old
	for old in $(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E '^netpact/(debian|kind-node|flask|postgres|debug|netpact|gitserver):'); do
		case "$keep" in *" $old "*) ;; *)
			log "remove $old (inputs changed)"
			docker rmi "$old" >/dev/null 2>&1 || true
			;;
		esac
	done
}

case "${1:-}" in
build) build ;;
list) list ;;
*) echo "usage: $0 build|list" >&2; exit 2 ;;
esac
