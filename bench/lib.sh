# Sourced by the bench scripts (run.sh, instr.sh): a temporary directory
# in $tmp, and the server started in the background (its pid in $pid)
# stopped and the directory removed on exit; the workloads.

# need CMD...: exits unless every CMD is installed.
need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null || { echo "$(basename "$0") needs $c (apt-get install $c)" >&2; exit 1; }
	done
}

tmp=$(mktemp -d)
pid=
cleanup() {
	if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

# The workloads of run.sh and instr.sh (see run.sh): sets variants (of
# plain, tenant, write, write+tenant) from $VARIANTS, else from $TENANT
# and $WRITE; tenants, the tenant count (5 where a tenant workload is asked
# for without $TENANT); and extended, set where any of them is (the
# default modes then add pgxpool and pgx).
# shellcheck disable=SC2034 # set for the scripts that source this file
workloads() {
	tenants=${TENANT:-0}
	extended=
	if [ -n "${VARIANTS:-}" ]; then
		variants=$VARIANTS
		extended=1
	elif [ "${WRITE:-0}" = 1 ] && [ "$tenants" -gt 0 ]; then
		variants="plain tenant write" extended=1
	elif [ "${WRITE:-0}" = 1 ]; then
		variants="write" extended=1
	elif [ "$tenants" -gt 0 ]; then
		variants="plain tenant" extended=1
	else
		variants=plain
	fi
	case " $variants " in *tenant*) [ "$tenants" -gt 0 ] || tenants=5 ;; esac
}

# server_flags VARIANT, load_flags VARIANT: the flags of bench/server and
# bench/load for a workload.
server_flags() {
	case $1 in
	plain) ;;
	tenant) echo "-tenant -tenants $tenants" ;;
	write) echo "-write" ;;
	write+tenant) echo "-write -tenant -tenants $tenants" ;;
	*) echo "$(basename "$0"): unknown workload $1 (want plain, tenant, write or write+tenant)" >&2; exit 1 ;;
	esac
}
load_flags() {
	case $1 in
	tenant) echo "-tenants $tenants" ;;
	write) echo "-write" ;;
	write+tenant) echo "-write -tenants $tenants" ;;
	esac
}

# base_variant VARIANT: the workload a tenant workload is compared with
# (x_plain), or nothing.
base_variant() {
	case $1 in
	tenant) echo plain ;;
	write+tenant) echo write ;;
	esac
}
