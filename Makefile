# Filament build, test, demo and benchmarks. Run as root on Debian (bookworm):
# targets install the Debian packages they need with apt only when missing.

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
BUILD_DATE ?= $(shell git log -1 --format=%cI 2>/dev/null)
LDFLAGS := -X github.com/filament-net/filament/internal/version.Version=$(VERSION) \
	-X github.com/filament-net/filament/internal/version.Commit=$(COMMIT) \
	-X github.com/filament-net/filament/internal/version.BuildDate=$(BUILD_DATE)
BINS := filament-agent filament filament-cni filament-lab filament-clustermesh-apiserver filament-proxy filament-relay
# A name no README example uses: make demo replaces only a lab it made.
DEMO_LAB ?= filament-demo
DEMO_MARK := /var/run/filament-lab/$(DEMO_LAB)/made-by-make-demo

# command:package pairs installed by `deps` when the command is missing.
DEPS := clang-16:clang-16 llc-16:llvm-16 ip:iproute2 iperf3:iperf3 tcpdump:tcpdump ping:iputils-ping jq:jq iptables-legacy-restore:iptables curl:curl wg:wireguard-tools nsenter:util-linux h2load:nghttp2-client wrk:wrk haproxy:haproxy dig:dnsutils dnsmasq:dnsmasq-base dnsperf:dnsperf kcat:kcat chromium:chromium containerd:containerd runc:runc
DEPS_FILES := /usr/include/bpf/bpf_helpers.h:libbpf-dev

.PHONY: old-bin kube-apiserver kubelet test-node hubble hubble-protos all build generate test test-unit demo demo-down bench lint clean deps check-root fuzz

all: build

deps:
	@missing=""; \
	for d in $(DEPS); do cmd=$${d%%:*}; pkg=$${d##*:}; command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	for d in $(DEPS_FILES); do f=$${d%%:*}; pkg=$${d##*:}; [ -e $$f ] || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
		echo "== installing Debian packages:$$missing (apt-get; a few minutes on a fresh machine)"; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install$$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# -v names each package as it is compiled (nothing when all is cached): a
# first build downloads the modules and compiles them, which takes a long time.
build:
	@mkdir -p bin
	@echo "== go build $(BINS) into bin/ (a first build downloads and compiles every dependency:"
	@echo "   up to half an hour on a busy 2-core machine, listing packages as it goes; this is normal)"
	$(GO) build -v -ldflags "$(LDFLAGS)" -o bin/ $(addprefix ./cmd/,$(BINS))

# BPF objects are generated with clang-16 through bpf2go and committed, so
# `go build` needs no clang; a test fails when they are stale.
generate: deps
	$(GO) generate ./bpf/...

# The whole suite, privileged datapath tests included: needs root. A test
# that would need root fails instead of skipping (FILAMENT_REQUIRE_PRIVILEGED).
# check-root comes first so that a non-root run fails before building anything.
test: check-root deps build kube-apiserver kubelet hubble cyclonedx old-bin
	@echo "== go test ./... (about 30 minutes on a 2-core machine; the lab package alone about 21)"
	FILAMENT_REQUIRE_PRIVILEGED=1 FILAMENT_BIN_DIR=$(CURDIR)/bin FILAMENT_OLD_BIN_DIR=$(OLD_BIN) FILAMENT_KUBE_APISERVER=$(KUBE_APISERVER) FILAMENT_KUBELET=$(KUBELET) FILAMENT_HUBBLE=$(HUBBLE) FILAMENT_CYCLONEDX=$(CYCLONEDX) $(GO) test -count=1 -timeout 35m ./...

# Agent, CLI and CNI plugin of an older version, for the lab's mixed-version
# tests (a cluster mid-upgrade): OLD_REF is the last commit before
# NetworkPolicies had their own key. Built once from this repository's
# history (git archive, so the work tree is untouched) into a cache
# directory; without that commit in the clone (a shallow clone) it says so
# and the tests skip, naming it.
OLD_REF := 176f624
OLD_BIN ?= $(HOME)/.cache/filament/filament-$(OLD_REF)
old-bin:
	@[ -x $(OLD_BIN)/filament-agent ] || { \
		if ! git rev-parse -q --verify $(OLD_REF)^{commit} >/dev/null; then echo "== old-bin: commit $(OLD_REF) is not in this clone; the mixed-version tests will skip"; exit 0; fi; \
		echo "== building filament $(OLD_REF) (mixed-version tests) into $(OLD_BIN)"; \
		d=$$(mktemp -d) && git archive $(OLD_REF) | tar -x -C $$d && (cd $$d && $(GO) build -o $(OLD_BIN).tmp/ ./cmd/filament-agent ./cmd/filament ./cmd/filament-cni) && \
		rm -rf $$d $(OLD_BIN) && mv $(OLD_BIN).tmp $(OLD_BIN); }

check-root:
	@if [ "$$(id -u)" != 0 ]; then echo "make $(MAKECMDGOALS) needs root (network namespaces, veths); use make test-unit" >&2; exit 1; fi

# A real kube-apiserver for the Kubernetes tests, built from the Go module
# proxy (k8s.io/kubernetes with its staging modules pinned) and cached.
KUBE_APISERVER ?= $(HOME)/.cache/filament/kube-apiserver-v1.37.1
kube-apiserver:
	@GO=$(GO) deploy/kube/build-kube-apiserver.sh $(KUBE_APISERVER)

# A kubelet of the same Kubernetes version, for the real-node test (issue
# 20 part 3), built the same way and cached.
KUBELET ?= $(HOME)/.cache/filament/kubelet-v1.37.1
kubelet:
	@GO=$(GO) KUBE_COMMAND=kubelet deploy/kube/build-kube-apiserver.sh $(KUBELET)

# The node tests: the chart on a real kubelet with containerd and a real
# kube-apiserver (the agent as the DaemonSet's pod, pods networked by
# Filament, a Service, a NetworkPolicy, the uninstall DaemonSet), the
# rendered DaemonSet's pod started through containerd's CRI, the chart's
# commands against a real kube-apiserver, uninstall on a namespace and
# bpffs of its own, the pause image (docs/install.md, "what the real-node
# test runs"). They are part of `make test` too (about four minutes); this
# target runs only them.
test-node: check-root deps build kube-apiserver kubelet
	FILAMENT_REQUIRE_PRIVILEGED=1 FILAMENT_BIN_DIR=$(CURDIR)/bin FILAMENT_KUBE_APISERVER=$(KUBE_APISERVER) FILAMENT_KUBELET=$(KUBELET) $(GO) test -count=1 -timeout 20m \
		./deploy/kube/ ./internal/kubenode/ ./agent/uninstall/ ./agent/procsys/ ./agent/cniinstall/ ./agent/k8s/incluster/

# The real hubble CLI for the observability work (issue 17), built from the
# Go module proxy (the hubble/ package of github.com/cilium/cilium in a
# scratch module) and cached. make test uses it (TestHubbleObserve runs the real CLI).
HUBBLE ?= $(HOME)/.cache/filament/hubble-v1.20.2
hubble:
	@GO=$(GO) deploy/hubble/build-hubble.sh $(HUBBLE)

# cyclonedx-gomod, which writes the release's SBOMs (CycloneDX JSON: every Go
# module of a binary with version, hashes and license), installed once from
# the Go module proxy into a cache directory (go.mod untouched).
CYCLONEDX_VERSION := v1.10.0
CYCLONEDX ?= $(HOME)/.cache/filament/cyclonedx-gomod-$(CYCLONEDX_VERSION)/cyclonedx-gomod
cyclonedx:
	@[ -x $(CYCLONEDX) ] || { echo "== installing cyclonedx-gomod $(CYCLONEDX_VERSION) into $(dir $(CYCLONEDX))"; \
		cd $$(mktemp -d) && GOFLAGS=-mod=mod GOBIN=$(dir $(CYCLONEDX)) $(GO) install github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@$(CYCLONEDX_VERSION); }

# Release artifacts in $(DIST): static binaries (CGO off, -trimpath) per
# platform in $(DIST)/build/<os>/<arch>/, the OCI image built from them with
# go-containerregistry (make image: no Docker, no registry; an OCI layout in
# $(DIST)/image and an archive ctr/podman import), then (make release) a
# tar.gz of binaries per platform, the rendered manifests, the packaged chart,
# a CycloneDX SBOM per artifact and SHA256SUMS. Reproducible: every time is
# the commit's, so the same commit gives the same digests.
DIST ?= dist
RELEASE_PLATFORMS := linux/amd64 linux/arm64
APP_VERSION := $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' deploy/helm/filament/Chart.yaml)
IMAGE ?= ghcr.io/filament-net/filament:$(APP_VERSION)
RELEASE_FLAGS = -dist $(DIST) -name $(IMAGE) -version $(VERSION) -commit $(COMMIT) -created $(BUILD_DATE)
static:
	@for p in $(RELEASE_PLATFORMS); do \
		echo "== static binaries for $$p into $(DIST)/build/$$p"; mkdir -p $(DIST)/build/$$p; \
		CGO_ENABLED=0 GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -trimpath -buildvcs=false -ldflags "-s -w $(LDFLAGS)" \
			-o $(DIST)/build/$$p/ ./cmd/filament-agent ./cmd/filament ./cmd/filament-cni ./cmd/filament-clustermesh-apiserver ./cmd/filament-relay ./cmd/filament-proxy || exit 1; \
	done
image: static
	$(GO) run ./deploy/release image $(RELEASE_FLAGS)
release: image cyclonedx
	$(GO) run ./deploy/release release $(RELEASE_FLAGS) -cyclonedx $(CYCLONEDX)
	@echo "== $(DIST):"; ls -l $(DIST)

# Regenerates the committed Go code of Hubble's gRPC API (agent/hubble/pb/,
# issue 17) from the .proto files of github.com/cilium/cilium v1.20.2 in the
# Go module cache, with protoc (Debian) and protoc-gen-go/-go-grpc installed
# into a temporary GOBIN. Nothing depends on it: `go build` needs no protoc.
hubble-protos:
	@GO=$(GO) deploy/hubble/gen-protos.sh

# Every fuzz target (func Fuzz* in a *_test.go) for FUZZTIME each, one at a
# time (go test -fuzz takes one target per package); `make test` runs only
# their committed seeds (testdata/fuzz/). A failing input is written to the
# package's testdata/fuzz/<Target>/ and the run stops. The bpf targets need root.
FUZZTIME ?= 30s
fuzz:
	@set -e; for pkg in $$(grep -rl --exclude-dir=.git --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
		for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$t for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

# Unprivileged tests only (privileged ones skip and say why).
test-unit:
	$(GO) test -count=1 -short ./...

# Two clusters of two nodes each, joined into a cluster mesh as a user
# would (filament clustermesh connect), pods talking across nodes and
# clusters, a cluster-label policy enforced in the kernel and a denied flow
# in filament monitor, ..., and c1's Hubble relay (flows of the whole mesh,
# its web page); leaves the lab up for exploring.
DEMO_ROUTING ?= tunnel
demo: check-root deps build
	@if [ -e /var/run/filament-lab/$(DEMO_LAB)/lab.json ] && [ ! -e $(DEMO_MARK) ]; then \
		echo "a lab named $(DEMO_LAB) exists that make demo did not create: remove it (bin/filament-lab down --name $(DEMO_LAB)) or pick another name (make demo DEMO_LAB=...)" >&2; exit 1; fi
	@bin/filament-lab down --name $(DEMO_LAB) >/dev/null 2>&1 || true
	@echo "== starting lab $(DEMO_LAB): 2 clusters of 2 nodes (about a minute)"
	bin/filament-lab up --name $(DEMO_LAB) --clusters 2 --nodes 2 --routing $(DEMO_ROUTING) --encryption wireguard --encryption-strict
	@touch $(DEMO_MARK)
	bin/filament-lab pod add --name $(DEMO_LAB) c1/n1 web-1 --labels app=web
	bin/filament-lab pod add --name $(DEMO_LAB) c1/n2 web-2 --labels app=web
	bin/filament-lab pod add --name $(DEMO_LAB) c2/n1 db-1 --labels app=db
	bin/filament-lab pod add --name $(DEMO_LAB) c2/n2 other-1 --labels app=other
	@echo; echo "== filament clustermesh connect (c1 <-> c2), then status"
	bin/filament-lab exec --name $(DEMO_LAB) c1/n1 -- sh -c 'filament clustermesh connect --to $$FILAMENT_LAB_DIR/c2/clustermesh'
	bin/filament-lab exec --name $(DEMO_LAB) c1/n1 -- filament clustermesh status --wait 60s
	bin/filament-lab exec --name $(DEMO_LAB) c2/n1 -- filament clustermesh status --wait 60s
	@echo; echo "== filament node list (c1/n1) and endpoints of each node"
	bin/filament-lab exec --name $(DEMO_LAB) c1/n1 -- filament node list
	@for n in c1/n1 c1/n2 c2/n1 c2/n2; do echo "-- $$n"; bin/filament-lab exec --name $(DEMO_LAB) $$n -- filament endpoint list; done
	@echo; echo "== policy on c2: db accepts PostgreSQL and ping from web pods of cluster c1 only"
	bin/filament-lab exec --name $(DEMO_LAB) c2/n1 -- filament policy import docs/examples/allow-web-from-c1.yaml
	@echo "-- imported on c2/n1, the policy is c2's: c2/n2 has it too"
	@for i in $$(seq 50); do bin/filament-lab exec --name $(DEMO_LAB) c2/n2 -- filament policy get default/allow-web-from-c1 >/dev/null 2>&1 && break; sleep 0.2; done
	bin/filament-lab exec --name $(DEMO_LAB) c2/n2 -- filament policy list
	@db=$$(bin/filament-lab status --name $(DEMO_LAB) -o json | jq -r '.pods[] | select(.name=="db-1") | .ip'); \
	mon=$$(mktemp); \
	timeout 8 bin/filament-lab exec --name $(DEMO_LAB) c2/n1 -- filament monitor > $$mon 2>&1 & \
	for i in $$(seq 50); do grep -q Listening $$mon && break; sleep 0.1; done; \
	echo; echo "== web-1 (c1/n1) pings db-1 (c2/n1) across clusters: allowed"; \
	bin/filament-lab pod exec --name $(DEMO_LAB) web-1 -- ping -c 2 -W 1 $$db; \
	echo; echo "== web-2 (c1/n2) pings db-1: allowed"; \
	bin/filament-lab pod exec --name $(DEMO_LAB) web-2 -- ping -c 1 -W 1 $$db; \
	echo; echo "== other-1 (c2/n2) pings db-1: denied (only c1's web may)"; \
	bin/filament-lab pod exec --name $(DEMO_LAB) other-1 -- ping -c 2 -W 1 $$db || true; \
	wait; echo; echo "== filament monitor on c2/n1 saw:"; cat $$mon; rm -f $$mon
	@echo; echo "== filament policy trace on c2/n1"
	bin/filament-lab exec --name $(DEMO_LAB) c2/n1 -- filament policy trace --src app=web,filament.io/cluster=c1 --dst app=db --protocol ICMP --dport 8
	bin/filament-lab exec --name $(DEMO_LAB) c2/n1 -- filament policy trace --src app=other --dst app=db --protocol ICMP --dport 8
	@echo; echo "== a global service: shop/api in c1 (affinity local) and in c2, merged by c1"
	bin/filament-lab pod add --name $(DEMO_LAB) c1/n2 api-c1 --labels app=api
	bin/filament-lab pod add --name $(DEMO_LAB) c2/n1 api-c2 --labels app=api
	bin/filament-lab pod serve --name $(DEMO_LAB) api-c1 --port 8080
	bin/filament-lab pod serve --name $(DEMO_LAB) api-c2 --port 8080
	@ip1=$$(bin/filament-lab status --name $(DEMO_LAB) -o json | jq -r '.pods[] | select(.name=="api-c1") | .ip'); \
	ip2=$$(bin/filament-lab status --name $(DEMO_LAB) -o json | jq -r '.pods[] | select(.name=="api-c2") | .ip'); \
	sed "s/API_C2_IP/$$ip2/" docs/examples/api-c2.yaml | bin/filament-lab exec --name $(DEMO_LAB) c2/n1 -- filament service upsert -f - && \
	sed "s/API_C1_IP/$$ip1/" docs/examples/api-c1.yaml | bin/filament-lab exec --name $(DEMO_LAB) c1/n1 -- filament service upsert -f -
	@sleep 2; bin/filament-lab exec --name $(DEMO_LAB) c1/n1 -- filament service list
	@echo; echo "== web-1 (c1/n1) calls http://10.96.0.20 (the socket LB picks a backend at connect): c1's answers"
	@for i in 1 2 3; do bin/filament-lab pod exec --name $(DEMO_LAB) web-1 -- curl -s -m 2 http://10.96.0.20/; done
	@echo; echo "== api-c1's node c1/n2 stops: failure detection takes its backend out, clients fail over to c2"
	bin/filament-lab node stop --name $(DEMO_LAB) c1/n2
	@for i in $$(seq 50); do out=$$(bin/filament-lab pod exec --name $(DEMO_LAB) web-1 -- curl -s -m 1 http://10.96.0.20/); [ "$$out" = api-c2 ] && break; sleep 0.2; done
	@for i in 1 2 3; do bin/filament-lab pod exec --name $(DEMO_LAB) web-1 -- curl -s -m 2 http://10.96.0.20/; done
	bin/filament-lab exec --name $(DEMO_LAB) c1/n1 -- filament service list
	@echo; echo "== c1/n2 is back: clients fail back to c1"
	bin/filament-lab node start --name $(DEMO_LAB) c1/n2
	@for i in $$(seq 50); do out=$$(bin/filament-lab pod exec --name $(DEMO_LAB) web-1 -- curl -s -m 1 http://10.96.0.20/); [ "$$out" = api-c1 ] && break; sleep 0.2; done
	@for i in 1 2 3; do bin/filament-lab pod exec --name $(DEMO_LAB) web-1 -- curl -s -m 2 http://10.96.0.20/; done
	@echo; echo "== L7: api pods of c1 take GET /public/... from web pods; anything else gets 403 from the node's proxy"
	bin/filament-lab exec --name $(DEMO_LAB) c1/n1 -- filament policy import docs/examples/l7-public-only.yaml
	@ip1=$$(bin/filament-lab status --name $(DEMO_LAB) -o json | jq -r '.pods[] | select(.name=="api-c1") | .ip'); \
	mon=$$(mktemp); \
	timeout 8 bin/filament-lab exec --name $(DEMO_LAB) c1/n2 -- filament monitor --type l7 > $$mon 2>&1 & \
	for i in $$(seq 50); do grep -q Listening $$mon && break; sleep 0.1; done; \
	for i in $$(seq 50); do [ "$$(bin/filament-lab pod exec --name $(DEMO_LAB) web-1 -- curl -s -o /dev/null -w '%{http_code}' -m 1 http://$$ip1:8080/public/hello)" = 200 ] && break; sleep 0.2; done; \
	echo "-- web-1: GET http://$$ip1:8080/public/hello"; \
	bin/filament-lab pod exec --name $(DEMO_LAB) web-1 -- curl -s -w ' (HTTP %{http_code})\n' -m 2 http://$$ip1:8080/public/hello; \
	echo "-- web-1: GET http://$$ip1:8080/private"; \
	bin/filament-lab pod exec --name $(DEMO_LAB) web-1 -- curl -s -w ' (HTTP %{http_code})\n' -m 2 http://$$ip1:8080/private; \
	wait; echo "-- filament monitor --type l7 on c1/n2 saw:"; cat $$mon; rm -f $$mon
	@echo; echo "== DNS-aware policy: shopper (c1/n2) may look up *.svc.example at dns-1 and reach what those names resolve to, nothing else"
	bin/filament-lab pod add --name $(DEMO_LAB) c1/n1 dns-1 --labels app=dns
	bin/filament-lab pod add --name $(DEMO_LAB) c1/n2 shopper --labels app=shopper
	bin/filament-lab host add --name $(DEMO_LAB) shop --ip 10.0.9.1
	bin/filament-lab host add --name $(DEMO_LAB) bank --ip 10.0.9.2
	@for h in shop bank; do setsid bin/filament-lab host exec --name $(DEMO_LAB) $$h -- $(CURDIR)/bin/filament-lab serve-name --port 8080 --reply $$h >/dev/null 2>&1 < /dev/null & done
	@dns=$$(bin/filament-lab status --name $(DEMO_LAB) -o json | jq -r '.pods[] | select(.name=="dns-1") | .ip'); \
	bin/filament-lab pod exec --name $(DEMO_LAB) dns-1 -- dnsmasq --no-resolv --no-hosts --bind-interfaces --listen-address=$$dns --user=root \
		--local-ttl=60 --pid-file=/var/run/filament-lab/$(DEMO_LAB)/dnsmasq.pid --host-record=shop.svc.example,10.0.9.1 --host-record=bank.other.example,10.0.9.2
	bin/filament-lab exec --name $(DEMO_LAB) c1/n1 -- filament policy import docs/examples/dns-svc-example.yaml
	@dns=$$(bin/filament-lab status --name $(DEMO_LAB) -o json | jq -r '.pods[] | select(.name=="dns-1") | .ip'); \
	mon=$$(mktemp); \
	for i in $$(seq 50); do bin/filament-lab pod exec --name $(DEMO_LAB) shopper -- dig +short +tries=1 +time=1 @$$dns shop.svc.example 2>/dev/null | grep -q 10.0.9.1 && break; sleep 0.2; done; \
	timeout 8 bin/filament-lab exec --name $(DEMO_LAB) c1/n2 -- filament monitor --type l7 > $$mon 2>&1 & \
	for i in $$(seq 50); do grep -q Listening $$mon && break; sleep 0.1; done; \
	echo "-- shopper: dig shop.svc.example (allowed; its address is allowed before the answer arrives)"; \
	bin/filament-lab pod exec --name $(DEMO_LAB) shopper -- dig +noall +comments +answer +tries=1 +time=2 @$$dns shop.svc.example | grep -E 'status|IN'; \
	echo "-- shopper: curl http://10.0.9.1:8080/ (shop.svc.example)"; \
	bin/filament-lab pod exec --name $(DEMO_LAB) shopper -- curl -s -m 2 http://10.0.9.1:8080/; \
	echo "-- shopper: dig bank.other.example (denied: REFUSED by the node's proxy)"; \
	bin/filament-lab pod exec --name $(DEMO_LAB) shopper -- dig +noall +comments +tries=1 +time=2 @$$dns bank.other.example | grep status || true; \
	echo "-- shopper: curl http://10.0.9.2:8080/ (bank: no allowed lookup gave its address)"; \
	bin/filament-lab pod exec --name $(DEMO_LAB) shopper -- curl -s -m 2 http://10.0.9.2:8080/ || echo "(no connection: denied)"; \
	wait; echo "-- filament monitor --type l7 on c1/n2 saw:"; cat $$mon; rm -f $$mon
	bin/filament-lab exec --name $(DEMO_LAB) c1/n2 -- filament fqdn cache list
	@echo; echo "== filament encrypt status (c1/n1): every node of both clusters is an authenticated WireGuard peer"
	bin/filament-lab exec --name $(DEMO_LAB) c1/n1 -- filament encrypt status
	@echo; echo "== filament clustermesh status (c2/n1)"
	bin/filament-lab exec --name $(DEMO_LAB) c2/n1 -- filament clustermesh status
	@echo; echo "== the Hubble relay of c1: the flows of both clusters, through Hubble's Observer API and a web page"
	bin/filament-lab relay start --name $(DEMO_LAB) c1
	@echo "-- filament observe through the relay (c1/n1's namespace): the last drops of the mesh"
	bin/filament-lab exec --name $(DEMO_LAB) c1/n1 -- filament observe --server 127.0.0.1:4245 --verdict DROPPED --last 5
	@ns=$$(bin/filament-lab status --name $(DEMO_LAB) -o json | jq -r '.clusters[] | select(.name=="c1") | .relay.netns'); \
	echo "-- the web page answers in netns $$ns: HTTP $$(ip netns exec $$ns curl -s -o /dev/null -w '%{http_code}' -m 5 http://127.0.0.1:4246/)"; \
	echo; echo "Relay: Observer API 127.0.0.1:4245 and page http://127.0.0.1:4246/, both on the loopback of netns $$ns"; \
	echo "  bin/filament-lab exec --name $(DEMO_LAB) c1/n1 -- filament observe --server 127.0.0.1:4245 --last 20"; \
	if [ -x $(HUBBLE) ]; then echo "  ip netns exec $$ns $(HUBBLE) observe --server 127.0.0.1:4245 --last 20"; \
	else echo "  (the hubble CLI too, after make hubble: ip netns exec $$ns $(HUBBLE) observe --server 127.0.0.1:4245 --last 20)"; fi; \
	echo "  bin/filament-lab relay forward --name $(DEMO_LAB) c1    then open http://127.0.0.1:4246/ in a browser of this machine"
	@echo; echo "The lab stays up: try 'bin/filament-lab status --name $(DEMO_LAB)'; remove it with 'make demo-down'."

demo-down:
	bin/filament-lab down --name $(DEMO_LAB)

# Benchmarks print each figure beside its baseline from the same run.
bench: check-root deps build hubble
	FILAMENT_BIN_DIR=$(CURDIR)/bin $(GO) test -run '^$$' -bench . -benchtime 2s ./agent/identity/
	$(GO) test -run '^$$' -bench Ingest -benchtime 3s ./agent/hubble/
	FILAMENT_BIN_DIR=$(CURDIR)/bin $(GO) test -run '^$$' -bench . -benchtime 3x ./bpf/
	$(GO) test -run '^$$' -bench ScrubWalk -benchtime 3x ./agent/datapath/
	FILAMENT_BIN_DIR=$(CURDIR)/bin $(GO) test -run '^$$' -bench Resolve -benchtime 3x ./agent/policy/
	$(GO) test -run '^$$' -bench Parse10k -benchtime 1x ./agent/policy/api/
	$(GO) test -run '^$$' -bench Import10k -benchtime 1x ./agent/policysync/ 2>&1 | grep -vE 'level=(INFO|WARN)'
	$(GO) test -run '^$$' -bench . -benchtime 3x ./agent/service/maglev/
	$(GO) test -run '^$$' -bench . -benchtime 1x ./cloud/aws/
	$(GO) test -run '^$$' -bench MeshScale -benchtime 1x ./clustermesh/remote/ 2>&1 | grep -vE 'level=(INFO|WARN)'
	FILAMENT_BIN_DIR=$(CURDIR)/bin FILAMENT_HUBBLE=$(HUBBLE) $(GO) test -run '^$$' -bench . -benchtime 1x ./lab/

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

clean:
	rm -rf bin $(DIST)
