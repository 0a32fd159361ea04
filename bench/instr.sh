#!/usr/bin/env bash
# Instructions per message: the server's user-space instructions for each
# websocket message, raw vs sync vs async, counted by valgrind's
# cachegrind. Unlike msgs/s and CPU time they barely move with what else
# the machine does (about 0.5% between runs here), so they show what a
# change does to the work per message; they miss the kernel, cache
# misses and waiting, which run.sh measures.
#
#   bench/instr.sh                 # 8 clients, 100 then 600 messages each
#   TOP=30 bench/instr.sh          # and the 30 functions that differ most from raw (and, for a tenant workload, from the same mode without a tenant)
#   PROTO=http MODES="raw sync atomic" bench/instr.sh   # per HTTP request
#   TENANT=5 bench/instr.sh        # raw pgxpool sync async pgx, each without and with -tenant (5 tenants)
#   WRITE=1 bench/instr.sh         # the write workload
#   VARIANTS="plain tenant write write+tenant" TENANT=5 MODES="raw sync" bench/instr.sh
#
# The workloads (VARIANTS, TENANT, WRITE) are run.sh's: plain (items),
# tenant, write, write+tenant. x_raw is a mode's count over raw's in the
# same workload, x_plain a tenant workload's over the same mode's without
# a tenant (tenant over plain, write+tenant over write); resets/1k and
# wrong_t come from the driver's run of BIG messages (the pool's session
# resets per 1,000 messages, the replies of another tenant), and so does
# settings/1k (the round trips that carried set_config for the declared
# tenant, per 1,000 messages: the units that found no connection carrying
# it).
#
# Each mode's server runs under cachegrind for SMALL and BIG messages per
# client (each REPEAT times, the least count kept); the difference of the
# two totals over the difference in messages cancels start-up and
# shutdown. Needs valgrind,
# jq and PostgreSQL as run.sh does. A run takes about a minute.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

clients=${CLIENTS:-8}
small=${SMALL:-100}
big=${BIG:-600}
top=${TOP:-0}
repeat=${REPEAT:-2}
port=${PORT:-18190}
proto=${PROTO:-ws}
source bench/lib.sh
workloads
if [ -n "$extended" ]; then
	modes=${MODES:-raw pgxpool sync async pgx}
else
	modes=${MODES:-raw sync async}
fi

need valgrind jq

cachegrind_server
go build -o "$tmp/load" ./bench/load

# count MODE VARIANT N: the server's instructions over N messages per
# client, by function, into $tmp/MODE.VARIANT.N.fn (function<TAB>count),
# and the driver's result into $tmp/MODE.VARIANT.N.json; prints the total.
count() {
	local mode=$1 v=$2 n=$3 out=$tmp/cg.$1.$2.$3
	# Asynchronous preemption's signals upset valgrind's signal handling.
	# shellcheck disable=SC2046 # the flags are words
	GODEBUG=asyncpreemptoff=1 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out" \
		"$tmp/server" -mode "$mode" -addr "127.0.0.1:$port" -app "instr-$mode" $(server_flags "$v") >"$tmp/server.out" 2>&1 &
	pid=$!
	# The driver waits for the server, slow to start under valgrind.
	# shellcheck disable=SC2046
	"$tmp/load" -url "http://127.0.0.1:$port" -wait 120s -proto "$proto" -clients "$clients" -messages "$n" -timeout 120s \
		$(load_flags "$v") >"$tmp/load.json"
	jq -e '.replies == .clients * .messages_per_client and .error_replies == 0 and .wrong_replies == 0 and .wrong_tenants == 0' "$tmp/load.json" >/dev/null ||
		{ echo "instr.sh: $mode/$v/$n: load failed: $(cat "$tmp/load.json")" >&2; exit 1; }
	cp "$tmp/load.json" "$tmp/$mode.$v.$n.json"
	kill -TERM "$pid"
	wait "$pid" || true
	pid=
	fn_counts "$out" "$tmp/$mode.$v.$n.fn"
}

msgs=$((clients * (big - small)))
echo "# $(go version | cut -d' ' -f3), $(valgrind --version), proto=$proto clients=$clients messages=$small,$big, $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# variants=\"$variants\" tenants=$tenants"
printf '%-8s %-12s %14s %8s %8s %10s %12s %8s\n' mode workload instr/msg x_raw x_plain resets/1k settings/1k wrong_t
# ratio KEY: the count of $mode.$v over that of KEY (mode.variant), or -.
declare -A per
ratio() { [ -n "${per[$1]:-}" ] && awk -v a="${per[$mode.$v]}" -v r="${per[$1]}" 'BEGIN { printf "%.3f", a / r }' || echo -; }
for v in $variants; do
	for mode in $modes; do
		a=$(least "$mode" "$v" "$small")
		b=$(least "$mode" "$v" "$big")
		per[$mode.$v]=$(((b - a) / msgs))
		per_unit "$tmp/$mode.$v.$small.fn" "$tmp/$mode.$v.$big.fn" "$msgs" >"$tmp/$mode.$v.per"
		b0=$(base_variant "$v")
		printf '%-8s %-12s %14d %8s %8s %10s %12s %8s\n' "$mode" "$v" "${per[$mode.$v]}" "$(ratio "raw.$v")" \
			"$([ -n "$b0" ] && ratio "$mode.$b0" || echo -)" \
			"$(jq -r '.resets_per_1k_msgs // "-" | if type == "number" then (. * 10 | round / 10) else . end' "$tmp/$mode.$v.$big.json")" \
			"$(jq -r '.settings_per_1k_msgs // "-" | if type == "number" then (. * 10 | round / 10) else . end' "$tmp/$mode.$v.$big.json")" \
			"$(jq -r .wrong_tenants "$tmp/$mode.$v.$big.json")"
	done
done

if [ "$top" -gt 0 ]; then
	for v in $variants; do
		b0=$(base_variant "$v")
		for mode in $modes; do
			[ "$mode" != raw ] && [ -f "$tmp/raw.$v.per" ] && topdiff "raw.$v" "$mode.$v" "$mode - raw ($v), instructions per message"
			[ -n "$b0" ] && [ -f "$tmp/$mode.$b0.per" ] && topdiff "$mode.$b0" "$mode.$v" "$mode: $v - $b0, instructions per message"
		done
	done
fi
