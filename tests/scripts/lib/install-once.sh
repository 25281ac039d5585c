# Sourced by the install scripts in tests/scripts: the step they share that makes them
# idempotent and safe to run concurrently. The caller defines `installed` (is everything in
# place and its stamp current?), `print_result` (its stdout lines) and $STAMP.
#
# install_once LOCK: when `installed` holds, prints the result and exits 0. Otherwise waits
# for LOCK (fd 9, held until the script exits), checks again (another run may have finished
# while we waited), and returns with $STAMP removed: the caller installs, then writes the stamp.
install_once() {
	if installed; then
		print_result
		exit 0
	fi
	mkdir -p "$(dirname "$1")"
	exec 9>"$1"
	if command -v flock >/dev/null 2>&1; then
		flock 9
	fi
	if installed; then
		print_result
		exit 0
	fi
	rm -f "$STAMP"
}
