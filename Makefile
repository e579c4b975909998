# The two commands of the README: `make up` and `make test`. Both install missing build prerequisites
# (as root with apt) or print the exact command to run.
SHELL := /bin/bash
CARGO ?= cargo
FEATURES ?= --features etcd
export BERTH_SKIP_LOG := $(CURDIR)/target/skipped.txt

.PHONY: up test test-cluster build lint fmt bench-failover bench-registry bench-scheduler bench-dns bench-proxy bench-propagation bench-autoscale bench-api

build:
	@scripts/prereqs.sh build
	$(CARGO) build --release --bin berth

## Start Berth on the embedded default with the example app.
up: build
	@scripts/up.sh

## Every test this machine can run; says what it skipped and why. With cargo-nextest (CI installs it) every
## test of every crate runs in one pool (.config/nextest.toml); without it, plain cargo test, a crate at a time.
test:
	@scripts/prereqs.sh test
	@mkdir -p target && rm -f $(BERTH_SKIP_LOG)
	@export BERTH_FUZZ_SECS=$${BERTH_FUZZ_SECS:-10}; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  echo "$(CARGO) nextest run --workspace $(FEATURES) $(NOT_CLUSTER)"; \
	  $(CARGO) nextest run --workspace $(FEATURES) $(NOT_CLUSTER); \
	else \
	  echo "cargo-nextest is not installed (cargo install --locked cargo-nextest): running cargo test, slower"; \
	  $(CARGO) test --workspace $(FEATURES) --no-fail-fast -- --skip cluster::; \
	fi
	@if [ -s $(BERTH_SKIP_LOG) ]; then echo "Skipped (install the component to run them):"; sort -u $(BERTH_SKIP_LOG) | sed 's/^/  - /'; else echo "Skipped: nothing"; fi

# The multi-host tests (tests/it/cluster/) run only in `make test-cluster`.
NOT_CLUSTER := -E 'not (package(berth) & test(/^cluster::/))'

## Issue #17's fault table on the local Docker Engine: 3 etcd, 3 servers, 3 agents and a proxy, each its own
## container (tests/it/cluster/). One test at a time (.config/nextest.toml); skipped without Docker, root or etcd.
test-cluster:
	@scripts/prereqs.sh test-cluster
	@mkdir -p target && rm -f $(BERTH_SKIP_LOG)
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run -p berth --test it $(FEATURES) -E 'test(/^cluster::/)'; \
	else \
	  $(CARGO) test -p berth --test it $(FEATURES) --no-fail-fast -- cluster:: --test-threads 1; \
	fi
	@if [ -s $(BERTH_SKIP_LOG) ]; then echo "Skipped:"; sort -u $(BERTH_SKIP_LOG) | sed 's/^/  - /'; fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets $(FEATURES) -- -D warnings

fmt:
	$(CARGO) fmt --all

bench-registry:
	@scripts/prereqs.sh build
	$(CARGO) bench -p berth-benches --bench registry

bench-scheduler:
	@scripts/prereqs.sh build
	$(CARGO) run --release -p berth-benches --bin bench_scheduler

## GET and LIST over HTTPS beside plain HTTP, and the handshake's cost.
bench-api:
	@scripts/prereqs.sh build
	$(CARGO) run --release -p berth-benches --bin bench_api

bench-propagation:
	@scripts/prereqs.sh build
	$(CARGO) run --release -p berth-benches --bin bench_propagation

bench-dns:
	@scripts/prereqs.sh bench
	benches/dns/bench.sh

bench-proxy:
	@scripts/prereqs.sh bench
	bash benches/proxy/bench.sh

## Load step -> scale-up decision and -> new replicas serving, p50 over 5 trials (process runtime).
bench-autoscale: build
	$(CARGO) run --release -p berth-benches --bin bench_autoscale -- target/release/berth

## Leader kill and leader SIGTERM, 10 trials each, on the Docker cluster of `make test-cluster`: time to the new
## leader's first fenced write and to an agent's watch resuming on another replica (last line: RESULT ...).
bench-failover:
	@scripts/prereqs.sh test-cluster
	@mkdir -p target
	$(CARGO) test -p berth --test it $(FEATURES) -- cluster::bench::failover --ignored --nocapture --test-threads 1 \
	  2>&1 | tee target/bench-failover.log
	@grep '^RESULT failover' target/bench-failover.log | tail -1
