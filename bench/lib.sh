# Sourced by the bench scripts (run.sh, instr.sh): a temporary directory
# in $tmp, and the server started in the background (its pid in $pid)
# stopped and the directory removed on exit.

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
