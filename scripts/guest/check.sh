#!/usr/bin/env bash
# Boots the sample guest built by scripts/guest-build.sh once and checks what the product relies
# on: the ready marker, the heartbeat, the virtio disk, a command typed on the serial console,
# QMP system_reset and `reboot` coming back to the marker, and QMP system_powerdown making QEMU
# exit. The guest runs on a throw-away qcow2 overlay of sample.qcow2; every process and file it
# starts is removed on exit, also on failure.
#
# Usage: bash scripts/guest/check.sh [--quick] [--direct] [--accel tcg|kvm] [--image FILE]
#   --quick   skip the system_reset and reboot rounds
#   --direct  boot vmlinuz + initrd.img with -kernel/-initrd (still with the overlay as vda)
#             instead of SeaBIOS -> syslinux from the disk
#   --image   the sample.qcow2 to boot (default: the guest build's output directory)
# Exit status 0 when every check passed. Needs qemu-system-x86_64, qemu-img and socat
# (installed with apt-get when missing and running as root).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
data_dir=${HYPERPLANE_DATA_DIR:-.hyperplane}
GUEST_DIR=${HYPERPLANE_GUEST_DIR:-$data_dir/guest}
[[ $GUEST_DIR == /* ]] || GUEST_DIR=$REPO_ROOT/$GUEST_DIR
IMAGE=$GUEST_DIR/sample.qcow2
ACCEL=tcg
QUICK=0
DIRECT=0
BOOT_TIMEOUT=${HP_CHECK_BOOT_TIMEOUT:-60}
POWERDOWN_TIMEOUT=30
MARKER=HYPERPLANE-GUEST-READY

log() { printf '[guest-check] %s\n' "$*"; }
die() {
	printf '[guest-check] error: %s\n' "$*" >&2
	exit 2
}
while (($#)); do
	case "$1" in
	--quick) QUICK=1 ;;
	--direct) DIRECT=1 ;;
	--accel)
		ACCEL=${2:?--accel needs a value}
		shift
		;;
	--image)
		IMAGE=${2:?--image needs a file}
		shift
		;;
	-h | --help)
		sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument: $1 (try --help)" ;;
	esac
	shift
done

[[ -f $IMAGE ]] || die "no guest image at $IMAGE: run 'npm run guest:build' first"
IMAGE=$(realpath "$IMAGE")
IMG_DIR=$(dirname "$IMAGE")
for pair in qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils socat:socat; do
	if ! command -v "${pair%%:*}" >/dev/null; then
		[[ $EUID -eq 0 ]] || die "${pair%%:*} is missing (Debian package ${pair#*:})"
		log "installing ${pair#*:}"
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pair#*:}"; } >/dev/null ||
			die "apt-get install ${pair#*:} failed"
	fi
done

T=$(mktemp -d /tmp/hp-guest-check.XXXXXX) # short path: unix socket names are limited to 107 bytes
QPID=""
FAILED=1
cleanup() {
	if [[ -n $CONSOLE_PID ]]; then
		exec 3>&-
		kill "$CONSOLE_PID" 2>/dev/null || true
	fi
	if [[ -n $QPID ]] && kill -0 "$QPID" 2>/dev/null; then
		kill -TERM "$QPID" 2>/dev/null || true
		for _ in $(seq 1 50); do
			kill -0 "$QPID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$QPID" 2>/dev/null || true
		wait "$QPID" 2>/dev/null || true
	fi
	if [[ $FAILED == 1 && -f $T/console.log ]]; then
		echo "---- last lines of the serial console ----" >&2
		tail -n 25 "$T/console.log" | tr -d '\r' >&2 || true
		if [[ -s $T/qemu.err ]]; then
			echo "---- QEMU stderr ----" >&2
			tail -n 10 "$T/qemu.err" >&2 || true
		fi
	fi
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
fail() {
	printf '[guest-check] FAIL: %s\n' "$*" >&2
	exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%02d' $(($1 / 1000)) $((($1 % 1000) / 10)); }
log_size() { stat -c %s "$T/console.log" 2>/dev/null || echo 0; }
# wait_log REGEX TIMEOUT_S FROM_BYTE: waits until the console log, from byte FROM_BYTE on, has a
# line matching REGEX (extended, \r stripped). Fails at once if QEMU exits.
wait_log() {
	local re=$1 deadline=$(($(now_ms) + $2 * 1000)) from=$3
	while (($(now_ms) < deadline)); do
		if [[ -f $T/console.log ]] && tail -c +"$((from + 1))" "$T/console.log" | tr -d '\r' | grep -Eq -- "$re"; then
			return 0
		fi
		kill -0 "$QPID" 2>/dev/null || fail "QEMU exited while waiting for /$re/"
		sleep 0.05
	done
	return 1
}
# Types a line on the serial console, through one connection kept open for the whole check:
# QEMU takes input only as fast as the guest's UART drains it and drops what it has not taken
# yet when the client disconnects, so "write and hang up" loses characters. The connection's
# output side is read (and discarded; the chardev's logfile has it): an unread socket would
# stall the guest's serial output.
CONSOLE_PID=""
send_line() {
	if [[ -z $CONSOLE_PID ]]; then
		exec 3> >(exec socat - "UNIX-CONNECT:$T/console.sock" >/dev/null 2>"$T/socat.err")
		CONSOLE_PID=$!
	fi
	printf '%s\n' "$1" >&3
}
# Runs one QMP command (after the capabilities handshake); fails unless QEMU says "return".
qmp() {
	local out
	out=$(printf '{"execute":"qmp_capabilities"}\n{"execute":"%s"}\n' "$1" | socat -t 0.5 - "UNIX-CONNECT:$T/qmp.sock") ||
		fail "QMP $1: cannot talk to $T/qmp.sock"
	[[ $(grep -c '"return"' <<<"$out") -ge 2 ]] || fail "QMP $1 failed: $out"
}

qemu-img create -q -f qcow2 -b "$IMAGE" -F qcow2 "$T/ov.qcow2"
QEMU=(qemu-system-x86_64 -name hp-guest-check -accel "$ACCEL" -M pc -m 128 -nodefaults -display none
	-chardev "socket,id=ser0,path=$T/console.sock,server=on,wait=off,logfile=$T/console.log"
	-serial chardev:ser0
	-drive "file=$T/ov.qcow2,if=virtio,format=qcow2"
	-qmp "unix:$T/qmp.sock,server=on,wait=off")
mode="disk (SeaBIOS -> syslinux)"
if [[ $DIRECT == 1 ]]; then
	for f in vmlinuz initrd.img manifest.json; do [[ -f $IMG_DIR/$f ]] || die "--direct needs $IMG_DIR/$f"; done
	cmdline=$(sed -n 's/^ *"kernelCmdline": "\(.*\)",$/\1/p' "$IMG_DIR/manifest.json")
	QEMU+=(-kernel "$IMG_DIR/vmlinuz" -initrd "$IMG_DIR/initrd.img" -append "$cmdline")
	mode="direct kernel"
fi
log "booting $IMAGE ($mode, accel $ACCEL) on overlay $T/ov.qcow2"
log "qemu: ${QEMU[*]}"
t0=$(now_ms)
"${QEMU[@]}" </dev/null >"$T/qemu.out" 2>"$T/qemu.err" &
QPID=$!

# 1. ready marker
wait_log "^$MARKER" "$BOOT_TIMEOUT" 0 || fail "no $MARKER within ${BOOT_TIMEOUT}s"
boot_ms=$(($(now_ms) - t0))
uptime=$(tr -d '\r' <"$T/console.log" | sed -n "s/^$MARKER uptime=\([0-9.]*\).*/\1/p" | sed -n 1p)
log "ok: $MARKER $(secs "$boot_ms")s after QEMU start (guest uptime ${uptime:-?}s)"

# 2. disk, listed before the marker
disks=$(tr -d '\r' <"$T/console.log" | sed -n 's/^hp\.disks: *//p' | sed -n 1p)
[[ " $disks " == *" vda "* ]] || fail "hp.disks line does not list vda: '${disks}'"
log "ok: hp.disks: $disks"

# 3. heartbeat: two consecutive beats (a beat may share its line with a shell prompt)
wait_log 'hb 1$' 10 0 || fail "no 'hb 1' within 10 s of the marker"
wait_log 'hb 2$' 5 0 || fail "'hb 1' but no 'hb 2' within 5 s"
log "ok: heartbeat (hb 1, hb 2)"

# 4. a command through the serial console (retried: the shell may not have its prompt yet)
ok=0
for _ in 1 2 3; do
	# shellcheck disable=SC2016 # the guest's shell expands it
	send_line 'echo hp-$((6*7))'
	if wait_log '^hp-42$' 5 0; then
		ok=1
		break
	fi
done
[[ $ok == 1 ]] || fail "typed 'echo hp-\$((6*7))' on the serial console, no 'hp-42' came back"
log "ok: serial console shell (echo hp-\$((6*7)) -> hp-42)"

reset_ms="" reboot_ms=""
if [[ $QUICK == 0 ]]; then
	# 5. QMP system_reset -> marker again
	off=$(log_size)
	t=$(now_ms)
	qmp system_reset
	wait_log "^$MARKER" "$BOOT_TIMEOUT" "$off" || fail "no $MARKER within ${BOOT_TIMEOUT}s of system_reset"
	reset_ms=$(($(now_ms) - t))
	log "ok: system_reset -> $MARKER in $(secs "$reset_ms")s"

	# 6. `reboot` typed on the console -> marker again
	off=$(log_size)
	t=$(now_ms)
	ok=0
	for _ in 1 2 3; do
		send_line 'reboot'
		if wait_log "^$MARKER" "$BOOT_TIMEOUT" "$off"; then
			ok=1
			break
		fi
	done
	[[ $ok == 1 ]] || fail "no $MARKER after typing 'reboot'"
	reboot_ms=$(($(now_ms) - t))
	log "ok: reboot -> $MARKER in $(secs "$reboot_ms")s"
	wait_log 'hb 1$' 10 "$off" || fail "no heartbeat after reboot"
fi

# 7. QMP system_powerdown -> guest powers off -> QEMU exits by itself
t=$(now_ms)
qmp system_powerdown
deadline=$((t + POWERDOWN_TIMEOUT * 1000))
while kill -0 "$QPID" 2>/dev/null && (($(now_ms) < deadline)); do sleep 0.05; done
kill -0 "$QPID" 2>/dev/null && fail "QEMU still runs ${POWERDOWN_TIMEOUT}s after system_powerdown"
down_ms=$(($(now_ms) - t))
rc=0
wait "$QPID" || rc=$?
QPID=""
[[ $rc == 0 ]] || fail "QEMU exited with status $rc after system_powerdown"
grep -q 'power button pressed' "$T/console.log" || fail "QEMU exited but the guest never saw the power button"
log "ok: system_powerdown -> QEMU exited (status 0) in $(secs "$down_ms")s"

FAILED=0
summary="boot-to-marker $(secs "$boot_ms")s (guest uptime ${uptime:-?}s)"
[[ -z $reset_ms ]] || summary+=", system_reset $(secs "$reset_ms")s, reboot $(secs "$reboot_ms")s"
summary+=", powerdown $(secs "$down_ms")s"
log "PASS ($mode): $summary"
