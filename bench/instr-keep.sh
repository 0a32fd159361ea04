#!/usr/bin/env bash
# Instructions per message: the server's user-space instructions for each
# websocket message, raw vs sync vs async, counted by valgrind's
# cachegrind. Unlike msgs/s and CPU time they barely move with what else
# the machine does (about 0.5% between runs here), so they show what a
# change does to the work per message; they miss the kernel, cache
# misses and waiting, which run.sh measures.
#
#   bench/instr.sh                 # 8 clients, 100 then 600 messages each
#   TOP=30 bench/instr.sh          # and the 30 functions that differ most from raw
#   PROTO=http MODES="raw sync atomic" bench/instr.sh   # per HTTP request
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
modes=${MODES:-raw sync async}
proto=${PROTO:-ws}

source bench/lib.sh
need valgrind jq

# valgrind 3.19 does not decode RDTSCP, which the Go runtime's cputicks
# uses where the CPU has it: the server is built with the runtime's
# other branch (MFENCE; LFENCE; RDTSC), through a build overlay.
asm=$(go env GOROOT)/src/runtime/asm_amd64.s
awk '/CMPB.*HasRDTSCP/ { print "\tJMP\tfences"; getline; next } { print }' "$asm" >"$tmp/asm_amd64.s"
grep -q 'JMP	fences' "$tmp/asm_amd64.s" || { echo "instr.sh: cputicks not found in $asm" >&2; exit 1; }
printf '{"Replace":{"%s":"%s"}}\n' "$asm" "$tmp/asm_amd64.s" >"$tmp/overlay.json"
go build -overlay "$tmp/overlay.json" -o "$tmp/server" ./bench/server
go build -o "$tmp/load" ./bench/load

# count MODE N: the server's instructions over N messages per client, by
# function, into $tmp/MODE.N.fn (function<TAB>count); prints the total.
count() {
	local mode=$1 n=$2 out=$tmp/cg.$1.$2
	# Asynchronous preemption's signals upset valgrind's signal handling.
	GODEBUG=asyncpreemptoff=1 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out" \
		"$tmp/server" -mode "$mode" -addr "127.0.0.1:$port" -app "instr-$mode" >"$tmp/server.out" 2>&1 &
	pid=$!
	# The driver waits for the server, slow to start under valgrind.
	"$tmp/load" -url "http://127.0.0.1:$port" -wait 120s -proto "$proto" -clients "$clients" -messages "$n" -timeout 120s >"$tmp/load.json"
	jq -e '.replies == .clients * .messages_per_client and .error_replies == 0' "$tmp/load.json" >/dev/null ||
		{ echo "instr.sh: $mode/$n: load failed: $(cat "$tmp/load.json")" >&2; exit 1; }
	kill -TERM "$pid"
	wait "$pid" || true
	pid=
	awk '/^fn=/ { fn = substr($0, 4); next } NF == 2 && $1 ~ /^[0-9]+$/ { ir[fn] += $2 }
		END { for (f in ir) printf "%s\t%d\n", f, ir[f] }' "$out" >"$tmp/$mode.$n.fn"
	awk -F'\t' '{ t += $2 } END { printf "%d\n", t }' "$tmp/$mode.$n.fn"
}

msgs=$((clients * (big - small)))
echo "# $(go version | cut -d' ' -f3), $(valgrind --version), proto=$proto clients=$clients messages=$small,$big, $(date -u +%FT%TZ)"
printf '%-6s %14s %8s\n' mode instr/msg x_raw
# least MODE N: count's least total over $repeat runs, its functions kept:
# now and then a run spends far more (the runtime spinning while valgrind
# serializes its threads), never less.
least() {
	local best= t
	for _ in $(seq 1 "$repeat"); do
		t=$(count "$1" "$2")
		if [ -z "$best" ] || [ "$t" -lt "$best" ]; then
			best=$t
			cp "$tmp/$1.$2.fn" "$tmp/$1.$2.best"
		fi
	done
	mv "$tmp/$1.$2.best" "$tmp/$1.$2.fn"
	echo "$best"
}

for mode in $modes; do
	a=$(least "$mode" "$small")
	b=$(least "$mode" "$big")
	per=$(((b - a) / msgs))
	[ "$mode" = raw ] && rawper=$per
	# Per function: (big - small) / messages.
	awk -F'\t' -v m="$msgs" 'NR == FNR { s[$1] = $2; next } { d[$1] = $2 - s[$1] } END { for (f in d) printf "%s\t%.0f\n", f, d[f] / m }' \
		"$tmp/$mode.$small.fn" "$tmp/$mode.$big.fn" >"$tmp/$mode.per"
	cp "$tmp/$mode.per" "${OUT:-/tmp}/$mode.per"; printf '%-6s %14d %8s\n' "$mode" "$per" "$([ -n "${rawper:-}" ] && awk -v a="$per" -v r="$rawper" 'BEGIN { printf "%.3f", a / r }')"
done

if [ "$top" -gt 0 ] && [ -f "$tmp/raw.per" ]; then
	for mode in $modes; do
		[ "$mode" = raw ] && continue
		echo
		echo "# $mode - raw, instructions per message, the $top functions that differ most"
		awk -F'\t' 'NR == FNR { r[$1] = $2; next } { d = $2 - r[$1]; delete r[$1]; if (d) printf "%d\t%+8d\t%s\n", d < 0 ? -d : d, d, $1 }
			END { for (f in r) if (r[f]) printf "%d\t%+8d\t%s\n", r[f] < 0 ? -r[f] : r[f], -r[f], f }' "$tmp/raw.per" "$tmp/$mode.per" |
			sort -t$'\t' -k1,1nr | awk -F'\t' -v n="$top" 'NR <= n { print $2 "\t" $3 }'
	done
fi
