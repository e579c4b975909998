#!/usr/bin/env bash
# `make up`: start Berth on the embedded store (default data dir) with the demo manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
exec ./target/release/berth up -f config/demo/ "$@"
