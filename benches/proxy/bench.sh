#!/usr/bin/env bash
# Proxy benchmark: Berth vs nginx vs HAProxy as reverse proxies in front of the same two nginx backends
# (`return 200` with a 1 KiB body), each proxy with ONE worker thread, driven alternately by the same wrk
# settings; then HTTP/2 over TLS with h2load (Berth vs nginx); then Berth's RSS with 10,000 endpoints.
# Everything listens on 127.0.0.1 and is killed at the end. Last line: RESULT proxy ...
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DURATION="${BENCH_DURATION:-10s}"
CONNS="${BENCH_CONNS:-64}"
ROUNDS="${BENCH_ROUNDS:-5}"
H2_REQUESTS="${BENCH_H2_REQUESTS:-200000}"
POST_ROUNDS="${BENCH_POST_ROUNDS:-3}"

need() {
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing missing benchmark tools (nginx haproxy wrk nghttp2-client openssl)" >&2
        apt-get update -qq && apt-get install -y -qq nginx-light haproxy wrk nghttp2-client openssl >/dev/null || true
      fi
      command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool: apt-get install nginx haproxy wrk nghttp2-client openssl" >&2; exit 1; }
    fi
  done
}
need nginx haproxy wrk h2load openssl curl

TMP="$(mktemp -d /tmp/berth-bench-proxy.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  cat "$TMP"/logs/*.out >&2 2>/dev/null || true
  for f in "$TMP"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 0.2
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
B1=$(free_port); B2=$(free_port); BERTH=$(free_port); NGX=$(free_port); HAP=$(free_port)
BERTH_TLS=$(free_port); NGX_TLS=$(free_port)

BODY="$(head -c 1024 /dev/zero | tr '\0' 'x')"
mkdir -p "$TMP/logs"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 2 \
  -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" >/dev/null 2>&1

cat > "$TMP/backends.conf" <<CONF
worker_processes 1;
daemon on;
pid $TMP/backends.pid;
error_log $TMP/logs/backends.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$B1; location / { default_type text/plain; return 200 "$BODY"; } }
  server { listen 127.0.0.1:$B2; location / { default_type text/plain; return 200 "$BODY"; } }
}
CONF

cat > "$TMP/nginx-proxy.conf" <<CONF
worker_processes 1;
daemon on;
pid $TMP/nginx-proxy.pid;
error_log $TMP/logs/nginx-proxy.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$B1; server 127.0.0.1:$B2; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX;
    listen 127.0.0.1:$NGX_TLS ssl http2;
    ssl_certificate $TMP/cert.pem;
    ssl_certificate_key $TMP/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF

cat > "$TMP/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAP
  option forwardfor
  default_backend app
backend app
  balance roundrobin
  server b1 127.0.0.1:$B1
  server b2 127.0.0.1:$B2
CONF

cat > "$TMP/berth.yaml" <<CONF
proxy:
  httpListen: ["127.0.0.1:$BERTH"]
  httpsListen: ["127.0.0.1:$BERTH_TLS"]
  threads: 1
  maxInFlight: 100000
services:
  - name: app
    endpoints: ["127.0.0.1:$B1", "127.0.0.1:$B2"]
routes:
  - namespace: default
    name: all
    rules: [{path: {prefix: /}, backend: {service: app}}]
    tls: [{hosts: ["bench.test"], secretName: bench}]
certificates:
  - name: bench
    certFile: cert.pem
    keyFile: key.pem
CONF

echo "building berth and berth-proxy-bench (release)..." >&2
(cd "$ROOT" && cargo build --release -q --bin berth -p berth -p berth-benches --bin berth-proxy-bench)
BIN="$ROOT/target/release/berth-proxy-bench"

nginx -c "$TMP/backends.conf" -p "$TMP" 2>/dev/null
nginx -c "$TMP/nginx-proxy.conf" -p "$TMP" 2>"$TMP/logs/nginx-start.err" || { cat "$TMP/logs/nginx-start.err" >&2; exit 1; }
# Every proxy runs in a session of its own, as the nginx daemon does: with the kernel's autogroup scheduling
# (on by default), a proxy left in this script's session would share one CPU share with wrk, and lose to
# whichever proxy daemonized rather than to the others' code.
setsid haproxy -f "$TMP/haproxy.cfg" >"$TMP/logs/haproxy.out" 2>&1 < /dev/null &
PIDS+=($!)
# The shipped binary, as users run it: `berth proxy -c FILE` (threads: 1 from the file).
setsid "$ROOT/target/release/berth" proxy -c "$TMP/berth.yaml" --admin-listen 127.0.0.1:0 \
  > "$TMP/logs/berth.out" 2>&1 < /dev/null &
PIDS+=($!)
BERTH_PID=$!

wait_http() {
  for _ in $(seq 1 200); do
    if curl -s -o /dev/null "http://127.0.0.1:$1/"; then return 0; fi
    sleep 0.05
  done
  echo "nothing answers on port $1" >&2; exit 1
}
for p in $B1 $B2 $BERTH $NGX $HAP; do wait_http "$p"; done
for p in $BERTH $NGX $HAP; do
  size=$(curl -s "http://127.0.0.1:$p/" | wc -c)
  [ "$size" = 1024 ] || { echo "port $p answered $size bytes, expected 1024" >&2; exit 1; }
done

# wrk output -> "rps p50_ms p99_ms"
parse_wrk() {
  awk '
    function ms(v) { if (v ~ /us$/) { sub(/us$/,"",v); return v/1000 } if (v ~ /ms$/) { sub(/ms$/,"",v); return v+0 } if (v ~ /s$/) { sub(/s$/,"",v); return v*1000 } return v }
    /Requests\/sec/ { rps=$2 }
    $1=="50%" { p50=ms($2) }
    $1=="99%" { p99=ms($2) }
    /Non-2xx|Socket errors/ { errs=errs" "$0 }
    END { printf "%s %s %s\n", rps, p50, p99; if (errs!="") print "WARN:" errs > "/dev/stderr" }'
}

# Each round runs the three proxies back to back, so a round's figures share the machine's state (other
# tenants, CPU frequency); rounds vary more than proxies do. Reported: each figure's median over the rounds,
# and, round by round, how often Berth did at least as well as each peer.
# rounds LABEL N FILE [wrk options]: N alternating rounds; rows "round name rps p50_ms p99_ms" into FILE.
rounds() {
  local label=$1 n=$2 file=$3 round name port rps p50 p99
  shift 3
  : > "$file"
  for round in $(seq 1 "$n"); do
    for name in berth nginx haproxy; do
      case $name in berth) port=$BERTH;; nginx) port=$NGX;; haproxy) port=$HAP;; esac
      wrk -t1 -c"$CONNS" -d2s "$@" "http://127.0.0.1:$port/" >/dev/null 2>&1 # warm-up
      read -r rps p50 p99 < <(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$@" "http://127.0.0.1:$port/" | parse_wrk)
      printf "%s round %d  %-8s %10.0f req/s  p50 %6.2f ms  p99 %6.2f ms\n" "$label" "$round" "$name" "$rps" "$p50" "$p99"
      echo "$round $name $rps $p50 $p99" >> "$file"
    done
  done
}
# median FILE NAME COLUMN (3 = req/s, 4 = p50, 5 = p99)
median() {
  awk -v n="$2" -v c="$3" '$2==n {print $c}' "$1" | sort -g \
    | awk '{v[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}
# paired PEER: rounds where Berth's req/s >= the peer's, and rounds where Berth's p99 <= the peer's
paired() {
  awk -v p="$1" '$2=="berth" {r[$1]=$3; l[$1]=$5} $2==p {pr[$1]=$3; pl[$1]=$5}
    END {for (k in r) if (k in pr) {n++; if (r[k]>=pr[k]) a++; if (l[k]<=pl[k]) b++}
         printf "req/s at least equal in %d of %d rounds, p99 at most equal in %d of %d", a, n, b, n}' "$ROWS"
}

ROWS="$TMP/rounds.txt"
rounds GET "$ROUNDS" "$ROWS"
declare -A RPS P50 P99
for name in berth nginx haproxy; do
  RPS[$name]=$(median "$ROWS" "$name" 3); P50[$name]=$(median "$ROWS" "$name" 4); P99[$name]=$(median "$ROWS" "$name" 5)
done

# POST with a 1 KiB body (not a target; shown because bodies take a different path in Berth).
printf 'wrk.method = "POST"\nwrk.body = string.rep("p", 1024)\n' > "$TMP/post.lua"
PROWS="$TMP/post-rounds.txt"
rounds POST "$POST_ROUNDS" "$PROWS" -s "$TMP/post.lua"
post_median() { median "$PROWS" "$1" "$2"; }

h2() {
  h2load -n "$H2_REQUESTS" -c 16 -m 8 --connect-to="127.0.0.1:$1" "https://bench.test:$1/" 2>/dev/null \
    | awk '/^finished in/ { for (i=1;i<=NF;i++) if ($(i+1) ~ /^req\/s/) print $i }'
}
H2_BERTH=$(h2 "$BERTH_TLS" || true); H2_NGX=$(h2 "$NGX_TLS" || true)
H2_BERTH=${H2_BERTH:-0}; H2_NGX=${H2_NGX:-0}

RSS_LINE=$("$BIN" rss 10000 || true)
PROP_LINE=$("$BIN" propagation 1000 || true)
RSS_KIB=$(echo "$RSS_LINE" | sed -n 's/.*total_kib=\([0-9]*\).*/\1/p')
BERTH_RSS_KIB=$(awk '/VmRSS/ {print $2}' "/proc/$BERTH_PID/status" 2>/dev/null || echo 0)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b>0) printf "%.2f", a/b; else print "0" }'; }
echo
echo "proxy     req/s      p50 ms   p99 ms    (wrk -t1 -c$CONNS -d$DURATION, 1 KiB body, median of $ROUNDS rounds, 1 worker thread each)"
for name in berth nginx haproxy; do
  printf "%-8s %10.0f %8.2f %8.2f\n" "$name" "${RPS[$name]}" "${P50[$name]}" "${P99[$name]}"
done
echo "berth/nginx   = $(ratio "${RPS[berth]}" "${RPS[nginx]}")"
echo "berth/haproxy = $(ratio "${RPS[berth]}" "${RPS[haproxy]}")"
echo "round by round, berth vs nginx:   $(paired nginx)"
echo "round by round, berth vs haproxy: $(paired haproxy)"
echo "POST 1 KiB body, median of $POST_ROUNDS rounds: berth $(post_median berth 3) req/s (p99 $(post_median berth 5) ms), nginx $(post_median nginx 3) (p99 $(post_median nginx 5)), haproxy $(post_median haproxy 3) (p99 $(post_median haproxy 5))"
echo "h2 over TLS (h2load -c16 -m8): berth ${H2_BERTH} req/s, nginx ${H2_NGX} req/s, ratio $(ratio "$H2_BERTH" "$H2_NGX")"
echo "$RSS_LINE"
echo "$PROP_LINE   (registry write with an endpoint added -> routing table swapped; the next request reads it)"
echo "berth serving process RSS after the run: ${BERTH_RSS_KIB} KiB; with 10,000 endpoints: $((RSS_KIB / 1024)) MiB"
printf "RESULT proxy berth_rps=%.0f nginx_rps=%.0f haproxy_rps=%.0f vs_nginx=%s vs_haproxy=%s berth_p99_ms=%s h2_vs_nginx=%s\n" \
  "${RPS[berth]}" "${RPS[nginx]}" "${RPS[haproxy]}" "$(ratio "${RPS[berth]}" "${RPS[nginx]}")" \
  "$(ratio "${RPS[berth]}" "${RPS[haproxy]}")" "${P99[berth]}" "$(ratio "$H2_BERTH" "$H2_NGX")"
