#!/usr/bin/env bash
# DNS benchmark: dnsperf against Berth's DNS server and against NSD serving the same record set, both on
# loopback, in the same run, with the same client settings, alternating. Installs nothing.
#
# Env: SECS (per run, default 10), ROUNDS (alternations, default 2), CLIENTS (default 4),
#      OUTSTANDING (default 200), THREADS (server threads for both Berth and NSD, default 1).
# Last line: RESULT dns berth_qps=N nsd_qps=N vs_nsd=R berth_p99_ms=N
set -euo pipefail

SECS=${SECS:-10}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}
THREADS=${THREADS:-1}

need() {
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$1" ]; then
        echo "bench-dns: '$1' is missing; install it with: apt-get install -y $2" >&2
        exit 1
    fi
}
need dnsperf dnsperf
need nsd nsd
need dig bind9-dnsutils
need cargo cargo
NSD_BIN=$(command -v nsd || echo /usr/sbin/nsd)

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TMP=$(mktemp -d /tmp/berth-bench-dns.XXXXXX)
BERTH_PID=""
NSD_PID=""
cleanup() {
    [ -n "$BERTH_PID" ] && kill "$BERTH_PID" 2>/dev/null || true
    [ -n "$NSD_PID" ] && kill "$NSD_PID" 2>/dev/null || true
    [ -n "$BERTH_PID" ] && wait "$BERTH_PID" 2>/dev/null || true
    [ -n "$NSD_PID" ] && wait "$NSD_PID" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 30000))
        if ! ss -Hlnu "sport = :$p" 2>/dev/null | grep -q . && ! ss -Hlnt "sport = :$p" 2>/dev/null | grep -q .; then
            echo "$p"
            return 0
        fi
    done
    echo "bench-dns: no free port found" >&2
    return 1
}

wait_ready() { # port name
    for _ in $(seq 1 100); do
        if dig +short +time=1 +tries=1 @127.0.0.1 -p "$1" "$2" A 2>/dev/null | grep -q .; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench-dns: server on port $1 did not answer $2" >&2
    return 1
}

echo "building bench_dns_server (release)..."
(cd "$ROOT" && cargo build --release -q -p berth-benches --bin bench_dns_server)
BIN="$ROOT/target/release/bench_dns_server"
"$BIN" records "$TMP"

BERTH_PORT=$(free_port)
NSD_PORT=$(free_port)
while [ "$NSD_PORT" = "$BERTH_PORT" ]; do NSD_PORT=$(free_port); done

"$BIN" serve "$BERTH_PORT" "$THREADS" >"$TMP/berth.out" 2>&1 &
BERTH_PID=$!

REUSEPORT=no
[ "$THREADS" -gt 1 ] && REUSEPORT=yes
cat >"$TMP/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$NSD_PORT
    port: $NSD_PORT
    do-ip6: no
    server-count: $THREADS
    reuseport: $REUSEPORT
    username: ""
    chroot: ""
    zonesdir: "$TMP"
    zonelistfile: "$TMP/zone.list"
    xfrdfile: "$TMP/xfrd.state"
    xfrdir: "$TMP"
    pidfile: "$TMP/nsd.pid"
    logfile: "$TMP/nsd.log"
    database: ""
    verbosity: 0
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: cluster.local
    zonefile: "$TMP/cluster.local.zone"
EOF
"$NSD_BIN" -d -c "$TMP/nsd.conf" >"$TMP/nsd.out" 2>&1 &
NSD_PID=$!

PROBE=svc0.bench.svc.cluster.local
wait_ready "$BERTH_PORT" "$PROBE" || { cat "$TMP/berth.out" >&2; exit 1; }
wait_ready "$NSD_PORT" "$PROBE" || { cat "$TMP/nsd.out" "$TMP/nsd.log" >&2 2>/dev/null; exit 1; }

# Same answers from both (sorted A records of one name, SRV count of another).
for q in "$PROBE A" "_http._tcp.$PROBE SRV"; do
    b=$(dig +short @127.0.0.1 -p "$BERTH_PORT" $q | sort)
    n=$(dig +short @127.0.0.1 -p "$NSD_PORT" $q | sort)
    if [ "$b" != "$n" ]; then
        echo "bench-dns: answers differ for '$q':"$'\n'"berth: $b"$'\n'"nsd:   $n" >&2
        exit 1
    fi
done

cpu_ticks() { # pid -> user+system clock ticks of it and all its descendants (NSD: xfrd > main > server)
    local total=0 p todo=("$1")
    while [ "${#todo[@]}" -gt 0 ]; do
        p=${todo[0]}
        todo=("${todo[@]:1}")
        todo+=($(pgrep -P "$p" 2>/dev/null || true))
        [ -r "/proc/$p/stat" ] || continue
        total=$((total + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)

run() { # port -> prints qps, writes the dnsperf output to $TMP/last
    timeout $((SECS + 30)) dnsperf -s 127.0.0.1 -p "$1" -d "$TMP/queries" -c "$CLIENTS" -q "$OUTSTANDING" \
        -l "$SECS" -t 2 >"$TMP/last" 2>&1 || true
    awk '/Queries per second:/ {print $4}' "$TMP/last"
}

echo "dnsperf -c$CLIENTS -q$OUTSTANDING -l$SECS, $ROUNDS round(s), $THREADS server thread(s) each, $(wc -l <"$TMP/queries") query names"
# Besides qps, the server CPU time per answered query: on a shared machine it is steadier than qps.
printf '%-8s %-6s %12s %10s %14s\n' round server qps lost cpu_us/query
berth_total=0
nsd_total=0
berth_cpu=0
nsd_cpu=0
berth_done=0
nsd_done=0
measure() { # name pid port -> sets Q (qps), C (cpu ticks), D (queries completed)
    local before after
    before=$(cpu_ticks "$2")
    Q=$(run "$3")
    after=$(cpu_ticks "$2")
    C=$((after - before))
    D=$(awk '/Queries completed:/ {print $3}' "$TMP/last")
    local lost
    lost=$(awk '/Queries lost:/ {print $3}' "$TMP/last")
    [ -n "$Q" ] || { echo "bench-dns: dnsperf against $1 printed no qps:" >&2; cat "$TMP/last" >&2; exit 1; }
    printf '%-8s %-6s %12s %10s %14s\n' "$r" "$1" "$Q" "$lost" \
        "$(awk -v c="$C" -v d="$D" -v hz="$HZ" 'BEGIN {printf "%.2f", (d > 0 ? c / hz * 1e6 / d : 0)}')"
}
for r in $(seq 1 "$ROUNDS"); do
    measure berth "$BERTH_PID" "$BERTH_PORT"
    berth_total=$(awk -v a="$berth_total" -v b="$Q" 'BEGIN {print a + b}')
    berth_cpu=$((berth_cpu + C))
    berth_done=$((berth_done + D))
    measure nsd "$NSD_PID" "$NSD_PORT"
    nsd_total=$(awk -v a="$nsd_total" -v b="$Q" 'BEGIN {print a + b}')
    nsd_cpu=$((nsd_cpu + C))
    nsd_done=$((nsd_done + D))
done
berth_qps=$(awk -v t="$berth_total" -v n="$ROUNDS" 'BEGIN {printf "%.0f", t / n}')
nsd_qps=$(awk -v t="$nsd_total" -v n="$ROUNDS" 'BEGIN {printf "%.0f", t / n}')
ratio=$(awk -v a="$berth_qps" -v b="$nsd_qps" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')

# Client-observed p99 for Berth: a shorter run with per-query output (slower, so not used for qps).
timeout 40 dnsperf -s 127.0.0.1 -p "$BERTH_PORT" -d "$TMP/queries" -c "$CLIENTS" -q "$OUTSTANDING" -l 3 -t 2 -v \
    >"$TMP/verbose" 2>&1 || true
p99_ms=$(awk '$1 == ">" && $NF ~ /^[0-9.]+$/ {print $NF}' "$TMP/verbose" | sort -g |
    awk '{v[NR] = $1} END {if (NR == 0) {print "nan"} else {i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f", v[i] * 1000}}')

kill "$BERTH_PID" 2>/dev/null || true
wait "$BERTH_PID" 2>/dev/null || true
BERTH_PID=""
server_p99_us=$(awk -F= '/^p99_us=/ {print $2}' "$TMP/berth.out")

echo
printf '%-28s %s\n' "Berth qps (mean)" "$berth_qps"
printf '%-28s %s\n' "NSD qps (mean)" "$nsd_qps"
printf '%-28s %s\n' "Berth / NSD" "$ratio"
printf '%-28s %s\n' "Berth CPU us/query" "$(awk -v c="$berth_cpu" -v d="$berth_done" -v hz="$HZ" 'BEGIN {printf "%.2f", (d > 0 ? c / hz * 1e6 / d : 0)}')"
printf '%-28s %s\n' "NSD CPU us/query" "$(awk -v c="$nsd_cpu" -v d="$nsd_done" -v hz="$HZ" 'BEGIN {printf "%.2f", (d > 0 ? c / hz * 1e6 / d : 0)}')"
printf '%-28s %s\n' "Berth p99 (dnsperf, ms)" "$p99_ms"
printf '%-28s %s\n' "Berth p99 (server-side, us)" "${server_p99_us:-n/a}"
echo "RESULT dns berth_qps=$berth_qps nsd_qps=$nsd_qps vs_nsd=$ratio berth_p99_ms=$p99_ms"
