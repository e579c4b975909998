# The two commands of the README: `make up` and `make test`. Both install missing build prerequisites
# (as root with apt) or print the exact command to run.
SHELL := /bin/bash
CARGO ?= cargo
FEATURES ?= --features etcd
export BERTH_SKIP_LOG := $(CURDIR)/target/skipped.txt

.PHONY: up test build lint fmt bench-registry bench-scheduler bench-dns bench-proxy bench-propagation bench-autoscale bench-api

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
	  echo "$(CARGO) nextest run --workspace $(FEATURES)"; \
	  $(CARGO) nextest run --workspace $(FEATURES); \
	else \
	  echo "cargo-nextest is not installed (cargo install --locked cargo-nextest): running cargo test, slower"; \
	  $(CARGO) test --workspace $(FEATURES) --no-fail-fast; \
	fi
	@if [ -s $(BERTH_SKIP_LOG) ]; then echo "Skipped (install the component to run them):"; sort -u $(BERTH_SKIP_LOG) | sed 's/^/  - /'; else echo "Skipped: nothing"; fi

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
