# Entry points for building, running and testing renku-ssh. Every step lives in scripts/.
.PHONY: up down test build control-plane cluster-up cluster-down cluster-status deps bench

## up: start the local control plane, operator, gateway and a sample session, print an ssh command
##     (`make up DEVICE_FLOW=1` also starts Keycloak, for login without a key)
up:
	scripts/up.sh $(if $(DEVICE_FLOW),--device-flow)

## down: stop everything `make up` started
down:
	scripts/up.sh down

## test: formatting, clippy and all tests; starts the control plane when it is not running
test:
	scripts/test.sh

## build: debug build of every crate
build:
	cargo build --workspace --locked

## control-plane: build etcd, kube-apiserver and kube-controller-manager into the cache
control-plane:
	scripts/build-control-plane.sh

cluster-up:
	scripts/cluster.sh up

cluster-down:
	scripts/cluster.sh down

cluster-status:
	scripts/cluster.sh status

## deps: install the Debian packages builds and tests need
deps:
	scripts/install-deps.sh

## bench: run every benchmark and print figures side by side with their baselines
bench:
	scripts/bench.sh

## bench-NAME: run one benchmark, for example `make bench-control-plane`
bench-%:
	scripts/bench.sh $*

# ---------------------------------------------------------------------------------------------
# Helm chart (manifests/renku-ssh) and container images (images/)
# ---------------------------------------------------------------------------------------------
.PHONY: helm helm-crds helm-crds-check helm-lint helm-template helm-test static-binaries images

HELM_CHART := manifests/renku-ssh
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_DIR := $(or $(CARGO_TARGET_DIR),target)/$(STATIC_TARGET)/release
IMAGE_CONTEXT := $(or $(CARGO_TARGET_DIR),target)/images
CONTAINER_ENGINE ?= docker
IMAGE_REGISTRY ?= localhost/renku
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: "\(.*\)"/\1/p' $(HELM_CHART)/Chart.yaml)

## helm: build helm from the Go module proxy into the cache and print its path
helm:
	scripts/helm.sh path

## helm-crds: copy the generated SSHAccess CRD from crds/ into the chart
helm-crds:
	cp crds/ssh.renku.io_sshaccesses.yaml $(HELM_CHART)/crds/

## helm-crds-check: fail when the chart's CRD differs from the generated one in crds/
helm-crds-check:
	@diff -u crds/ssh.renku.io_sshaccesses.yaml $(HELM_CHART)/crds/ssh.renku.io_sshaccesses.yaml \
	  || { echo "the chart's CRD is stale: run make helm-crds" >&2; exit 1; }

## helm-lint: lint the chart with each sample values file
helm-lint: helm-crds-check
	for values in manifests/samples/values-*.yaml; do \
	  scripts/helm.sh lint --strict $(HELM_CHART) --values $$values || exit 1; \
	done

## helm-template: render the chart with manifests/samples/values-minimal.yaml
helm-template:
	scripts/helm.sh template renku-ssh $(HELM_CHART) --namespace renku \
	  --values manifests/samples/values-minimal.yaml

## helm-test: the chart's tests; helm_cluster and helm_binaries need the local control plane
helm-test:
	cargo test -p renku-ssh-integration --test helm_chart --test helm_cluster --test helm_binaries

## static-binaries: statically linked release builds of the operator, gateway and renku-sshd
static-binaries:
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
	  --target $(STATIC_TARGET) -p renku-ssh-operator -p renku-ssh-gateway -p renku-sshd

## images: build the three container images (needs docker or podman: CONTAINER_ENGINE=podman);
## each build context holds only its binary
images: static-binaries
	for image in operator:renku-ssh-operator gateway:renku-ssh-gateway sshd:renku-sshd; do \
	  folder=$${image%%:*}; binary=$${image#*:}; \
	  rm -rf $(IMAGE_CONTEXT)/$$folder && mkdir -p $(IMAGE_CONTEXT)/$$folder && \
	  cp $(STATIC_DIR)/$$binary $(IMAGE_CONTEXT)/$$folder/ && \
	  $(CONTAINER_ENGINE) build -f images/$$folder/Dockerfile \
	    -t $(IMAGE_REGISTRY)/$$binary:$(IMAGE_TAG) $(IMAGE_CONTEXT)/$$folder || exit 1; \
	done
