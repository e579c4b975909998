#!/usr/bin/env bash
# Install (as root with apt) or name (otherwise) what Berth needs on a Debian machine.
#   prereqs.sh build   cmake (pingora's zlib-ng), protoc (etcd-client)
#   prereqs.sh test    build + the system components the test suite uses (etcd, dig, curl, nginx, haproxy, testssl)
#   prereqs.sh ci      test + cargo-nextest (make test runs the suite with it when it is installed)
#   prereqs.sh test-cluster  build + etcd, Docker and iptables (make test-cluster: tests/it/cluster/)
#   prereqs.sh bench   test + the peers and load generators of the benchmarks (wrk, h2load, nsd, dnsperf)
set -euo pipefail
what=${1:-build}

# command -> Debian package
declare -A pkg=(
  [cmake]=cmake [protoc]=protobuf-compiler
  [etcd]=etcd-server [dig]=bind9-dnsutils [curl]=curl [nginx]=nginx [haproxy]=haproxy [testssl]=testssl.sh
  [docker]=docker.io [iptables]=iptables [nsenter]=util-linux
  [wrk]=wrk [h2load]=nghttp2-client [nsd]=nsd [dnsperf]=dnsperf
)
case "$what" in
  build) cmds=(cmake protoc) ;;
  test|ci) cmds=(cmake protoc etcd dig curl nginx haproxy testssl) ;;
  test-cluster) cmds=(cmake protoc etcd docker iptables nsenter) ;;
  bench) cmds=(cmake protoc etcd dig curl nginx haproxy testssl wrk h2load nsd dnsperf) ;;
  *) echo "usage: $0 build|test|test-cluster|ci|bench" >&2; exit 2 ;;
esac

# CI runs the tests through cargo-nextest (one pool for every test binary); `make test` falls back to cargo test.
if [ "$what" = ci ] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "prereqs: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

missing=()
for c in "${cmds[@]}"; do
  # Debian installs nginx/haproxy/nsd under /usr/sbin, which may not be on a user's PATH.
  command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || missing+=("${pkg[$c]}")
done
# etcd-client's build imports protoc's well-known types (google/protobuf/*.proto), which Debian ships in
# libprotobuf-dev, a package `--no-install-recommends` leaves out.
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "prereqs: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Packaged daemons must not keep running on their default ports; tests start their own instances.
  for svc in etcd nginx haproxy nsd; do
    (service "$svc" stop || systemctl stop "$svc") >/dev/null 2>&1 || true
  done
  exit 0
fi

echo "prereqs: missing ${missing[*]}. Install them with:" >&2
echo "    sudo apt-get install -y ${missing[*]}" >&2
if [ "$what" = build ]; then exit 1; fi
echo "prereqs: continuing; tests that need them will be skipped and listed." >&2
exit 0
