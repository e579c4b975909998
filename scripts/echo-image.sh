#!/usr/bin/env bash
# Build the `berth-echo:dev` Docker image locally: FROM scratch + a statically linked berth binary.
# No registry is involved. Usage: scripts/echo-image.sh [TAG]
set -euo pipefail
tag="${1:-berth-echo:dev}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu -p berth
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp target/x86_64-unknown-linux-gnu/release/berth "$ctx/berth"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY berth /usr/local/bin/berth
ENV HOST=0.0.0.0 PATH=/usr/local/bin
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["echo"]
DOCKERFILE
docker build -t "$tag" "$ctx"
echo "built $tag"
