# Entry points for building, running and testing renku-ssh. Every step lives in scripts/.
.PHONY: up down test build control-plane cluster-up cluster-down cluster-status deps bench

## up: start the local control plane, operator, gateway and a sample session, print an ssh command
up:
	scripts/up.sh

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
