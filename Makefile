# The two commands of the README: `make up` and `make test`. Both install missing build prerequisites
# (as root with apt) or print the exact command to run.
SHELL := /bin/bash
CARGO ?= cargo
FEATURES ?= --features etcd
export BERTH_SKIP_LOG := $(CURDIR)/target/skipped.txt

.PHONY: up test build lint fmt bench-registry bench-scheduler bench-dns bench-proxy bench-propagation bench-autoscale

build:
	@scripts/prereqs.sh build
	$(CARGO) build --release --bin berth

## Start Berth on the embedded default with the example app.
up: build
	@scripts/up.sh

## Every test this machine can run; says what it skipped and why.
test:
	@scripts/prereqs.sh test
	@mkdir -p target && rm -f $(BERTH_SKIP_LOG)
	$(CARGO) build --bin berth $(FEATURES)
	$(CARGO) test --workspace $(FEATURES) --no-fail-fast
	BERTH_FUZZ_SECS=$${BERTH_FUZZ_SECS:-10} $(CARGO) test -p discovery --test dns fuzz_for_a_duration -- --exact
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
