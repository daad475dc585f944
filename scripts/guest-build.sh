#!/usr/bin/env bash
# Builds the Hyperplane sample guest (image "sample") from Debian packages only:
#   - the Debian cloud kernel (linux-image-*-cloud-amd64, `apt-get download` + `dpkg -x`),
#   - a busybox-static initramfs whose init (scripts/guest/rootfs) loads the virtio modules,
#     prints "HYPERPLANE-GUEST-READY" on ttyS0, then "hb <n>" every second, and keeps a root
#     shell on ttyS0; the ACPI power button powers it off,
#   - one bootable disk, sample.qcow2: MBR + FAT16 partition with syslinux, the kernel, the
#     initramfs and syslinux.cfg (SeaBIOS -> syslinux -> Linux), built without loop mounts.
# Outputs in ${HYPERPLANE_GUEST_DIR:-${HYPERPLANE_DATA_DIR:-.hyperplane}/guest} (relative paths
# are relative to the repository root): sample.qcow2, vmlinuz, initrd.img, manifest.json,
# SHA256SUMS, and .stamp (written last; says what the outputs were built from).
#
# Usage: bash scripts/guest-build.sh [--force]
# Idempotent: when the stamp matches (kernel package version, hash of this script and of
# scripts/guest/* inputs) and the outputs match SHA256SUMS, it exits 0 at once.
set -euo pipefail

readonly FORMAT=1 # bump when the layout of the outputs changes
readonly META_PKG=linux-image-cloud-amd64
readonly DISK_MIB=64
readonly PART_START=2048 # sectors (1 MiB)
readonly BOOT_MARKER=HYPERPLANE-GUEST-READY
# Modules the guest loads; their dependencies are added. Optional ones may be missing or
# built into the kernel.
readonly REQUIRED_MODULES=(virtio_ring virtio virtio_pci virtio_blk)
readonly OPTIONAL_MODULES=(virtio_pci_modern_dev virtio_pci_legacy_dev virtio_net virtio_console
	virtio_balloon button evdev)

T0=$(date +%s%N)
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=$REPO_ROOT/scripts/guest
FORCE=0

elapsed() { printf '%d.%01ds' $((($(date +%s%N) - T0) / 1000000000)) $(((($(date +%s%N) - T0) / 100000000) % 10)); }
log() { printf '[guest-build %7s] %s\n' "+$(elapsed)" "$*"; }
die() {
	printf '[guest-build] error: %s\n' "$*" >&2
	exit 1
}

for arg in "$@"; do
	case "$arg" in
	--force) FORCE=1 ;;
	-h | --help)
		sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument: $arg (try --help)" ;;
	esac
done

data_dir=${HYPERPLANE_DATA_DIR:-.hyperplane}
OUT=${HYPERPLANE_GUEST_DIR:-$data_dir/guest}
[[ $OUT == /* ]] || OUT=$REPO_ROOT/$OUT
OUT=$(realpath -m "$OUT")
readonly OUT STAMP=$OUT/.stamp
readonly ARTIFACTS=(sample.qcow2 vmlinuz initrd.img manifest.json)

# Hash of everything the guest is built from (not check.sh: it only tests the result).
inputs_hash() {
	(
		cd "$REPO_ROOT"
		local files=()
		mapfile -d '' files < <(find scripts/guest-build.sh scripts/guest -type f ! -name check.sh ! -name '*.md' -print0 | LC_ALL=C sort -z)
		stat -c '%a %n' "${files[@]}"
		sha256sum "${files[@]}"
	) | sha256sum | cut -c1-64
}

# Sets KPKG (linux-image-<ver>), KVER (<ver>, the /lib/modules name) and KPKG_VERSION from the
# dependency of the metapackage (one apt-cache call when, as in Debian, it pins the version).
# Returns 1 when apt knows no such package (no package lists).
resolve_kernel() {
	local dep
	dep=$(apt-cache show --no-all-versions "$META_PKG" 2>/dev/null | sed -n 's/^Depends: //p' | sed 's/[,|]/\n/g' |
		sed -n 's/^ *\(linux-image-[0-9][^ ]*-cloud-amd64\(-unsigned\)\{0,1\}\)\( *(= *\([^)]*\))\)\{0,1\} *$/\1 \4/p' |
		sed -n 1p) || true
	[[ -n $dep ]] || return 1
	KPKG=${dep%% *}
	KPKG_VERSION=${dep#* }
	KVER=${KPKG#linux-image-}
	KVER=${KVER%-unsigned}
	if [[ -z $KPKG_VERSION ]]; then
		KPKG_VERSION=$(apt-cache show --no-all-versions "$KPKG" 2>/dev/null | sed -n 's/^Version: //p' | sed -n 1p) || true
	fi
	[[ -n $KPKG_VERSION ]] || return 1
}

outputs_ok() {
	local f
	for f in "${ARTIFACTS[@]}" SHA256SUMS; do [[ -s $OUT/$f ]] || return 1; done
	(cd "$OUT" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1)
}

# Exits 0 when the outputs are up to date for ($1 = kernel package version or ""); says why
# not unless $2 = quiet.
exit_if_cached() {
	[[ $FORCE == 0 && -f $STAMP ]] || return 0
	local want have
	have=$(cat "$STAMP")
	if [[ -n $1 ]]; then
		want="format=$FORMAT kernel=$KVER package=$KPKG_VERSION inputs=$INPUTS"
	else
		# No apt package lists: accept whatever kernel the cached guest was built with.
		want="format=$FORMAT $(sed -n 's/^format=[^ ]* \(kernel=[^ ]* package=[^ ]*\) .*/\1/p' <<<"$have") inputs=$INPUTS"
	fi
	if [[ $have == "$want" ]] && outputs_ok; then
		log "up to date: $OUT/sample.qcow2 (${have#* }) in $(elapsed)"
		exit 0
	fi
	if [[ ${2:-} == quiet ]]; then
		return 0
	elif [[ $have != "$want" ]]; then
		log "stale: built with '$have', want '$want'"
	else
		log "outputs in $OUT do not match SHA256SUMS: rebuilding"
	fi
}

# ---------------------------------------------------------------------------------------------
INPUTS=$(inputs_hash)
if resolve_kernel; then
	exit_if_cached "$KPKG_VERSION"
else
	[[ -f $STAMP ]] && log "apt-cache cannot resolve $META_PKG (no package lists?); checking the cached guest"
	exit_if_cached ""
	KPKG=""
fi

# ---------------------------------------------------------------------------------------------
[[ $EUID -eq 0 ]] || die "building the guest needs root (apt-get install/download, device nodes in the initramfs); run it as root, e.g. sudo npm run guest:build"
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock -w 900 9 || die "another guest build holds $OUT/.lock"
# Someone else may have finished the build while this one waited for the lock.
[[ -z $KPKG ]] || exit_if_cached "$KPKG_VERSION" quiet

WORK=$(mktemp -d "$OUT/.build.XXXXXX") # same filesystem as $OUT: the final mv are renames
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
APTLOG=$WORK/apt.log
log "output: $OUT (work dir $WORK)"

# -- tools ------------------------------------------------------------------------------------
apt_install() {
	log "installing Debian packages: $*"
	if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } >"$APTLOG" 2>&1; then
		tail -n 20 "$APTLOG" >&2
		die "apt-get install $* failed"
	fi
}
installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }
need=()
for pair in busybox-static:busybox-static cpio:cpio gzip:gzip qemu-img:qemu-utils sfdisk:fdisk \
	mkfs.vfat:dosfstools mcopy:mtools syslinux:syslinux /usr/lib/syslinux/mbr/mbr.bin:syslinux-common \
	apt-cache:apt dpkg:dpkg flock:util-linux; do
	what=${pair%%:*} pkg=${pair#*:}
	case "$what" in
	busybox-static) installed busybox-static || need+=("$pkg") ;; # the static one: it runs as PID 1
	/*) [[ -e $what ]] || need+=("$pkg") ;;
	*) command -v "$what" >/dev/null || need+=("$pkg") ;;
	esac
done
if ((${#need[@]})); then
	apt_install "${need[@]}"
else
	log "tools: all present"
fi
BUSYBOX=$(dpkg -L busybox-static | sed -n '/\/s\{0,1\}bin\/busybox$/p' | sed -n 1p)
[[ -x $BUSYBOX ]] || die "package busybox-static has no busybox binary?"

# -- kernel -----------------------------------------------------------------------------------
if [[ -z $KPKG ]]; then
	log "updating apt package lists to resolve $META_PKG"
	apt-get update -qq >"$APTLOG" 2>&1 || {
		tail -n 20 "$APTLOG" >&2
		die "apt-get update failed"
	}
	resolve_kernel || die "apt-cache knows no $META_PKG dependency (is this amd64 Debian?)"
fi
log "kernel: $KPKG $KPKG_VERSION (via $META_PKG)"
mkdir -p "$WORK/deb" "$WORK/kroot"
(cd "$WORK/deb" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG=$KPKG_VERSION") >"$APTLOG" 2>&1 || {
	tail -n 20 "$APTLOG" >&2
	die "apt-get download $KPKG=$KPKG_VERSION failed"
}
deb=$(find "$WORK/deb" -name '*.deb' | sed -n 1p)
[[ -n $deb ]] || die "apt-get download $KPKG left no .deb"
log "kernel: downloaded $(basename "$deb") ($(($(stat -c %s "$deb") / 1048576)) MiB), extracting"
dpkg -x "$deb" "$WORK/kroot"
VMLINUZ=$WORK/kroot/boot/vmlinuz-$KVER
[[ -f $VMLINUZ ]] || die "no boot/vmlinuz-$KVER in $(basename "$deb")"
MODROOT=""
for d in "$WORK/kroot/lib/modules/$KVER" "$WORK/kroot/usr/lib/modules/$KVER"; do
	if [[ -d $d ]]; then
		MODROOT=$d
		break
	fi
done
[[ -n $MODROOT ]] || die "no lib/modules/$KVER in $(basename "$deb")"

# -- modules ----------------------------------------------------------------------------------
# Debian's package has no modules.dep (its postinst runs depmod), so dependencies come from
# each module's own .modinfo "depends=" field, which is what depmod records too. Compressed
# modules (.ko.xz/.ko.zst/.ko.gz) are decompressed here: busybox insmod loads plain .ko only.
IRD=$WORK/initramfs
MODDIR=$IRD/lib/modules/hp
mkdir -p "$MODDIR"
declare -A MODFILE=() STATE=()
while IFS= read -r -d '' f; do
	b=${f##*/}
	b=${b%%.ko*}
	MODFILE[${b//-/_}]=$f
done < <(find "$MODROOT" \( -name '*.ko' -o -name '*.ko.*' \) -print0)
builtin_mod() { [[ -f $MODROOT/modules.builtin ]] && grep -q "/${1}\.ko\$" <(sed 's/-/_/g' "$MODROOT/modules.builtin"); }
ORDER=()
# Copies module $1 (and first its dependencies) into the initramfs, appending to ORDER.
add_module() {
	local m=$1 f dst deps d
	case "${STATE[$m]:-}" in
	"done") return 0 ;;
	active) die "module dependency cycle through $m" ;;
	esac
	f=${MODFILE[$m]:-}
	if [[ -z $f ]]; then
		builtin_mod "$m" && STATE[$m]="done" && return 0
		return 1
	fi
	STATE[$m]=active
	dst=$MODDIR/$m.ko
	case "$f" in
	*.ko) cp "$f" "$dst" ;;
	*.ko.xz) xz -dc "$f" >"$dst" ;;
	*.ko.zst) zstd -qdc "$f" >"$dst" ;;
	*.ko.gz) gzip -dc "$f" >"$dst" ;;
	*) die "unknown module compression: $f" ;;
	esac
	deps=$(tr '\0' '\n' <"$dst" | sed -n 's/^depends=//p')
	deps=${deps%%$'\n'*}
	for d in ${deps//,/ }; do
		add_module "${d//-/_}" || die "$m needs $d, which is neither a module nor built in"
	done
	STATE[$m]="done"
	ORDER+=("$m")
}
for m in "${REQUIRED_MODULES[@]}"; do
	add_module "$m" || die "kernel $KVER has no module $m and does not have it built in"
done
skipped=()
for m in "${OPTIONAL_MODULES[@]}"; do
	add_module "$m" || skipped+=("$m")
done
printf '%s\n' "${ORDER[@]}" >"$MODDIR/load-order"
log "modules: ${ORDER[*]} ($(du -sk "$MODDIR" | cut -f1) KiB)${skipped:+; not in this kernel: ${skipped[*]}}"

# -- initramfs --------------------------------------------------------------------------------
mkdir -p "$IRD"/{bin,sbin,dev,proc,sys,run,tmp,root,mnt,var/log,etc}
cp "$BUSYBOX" "$IRD/bin/busybox"
while IFS= read -r applet; do
	[[ -e $IRD/bin/$applet ]] || ln -s busybox "$IRD/bin/$applet"
done < <("$BUSYBOX" --list)
cp -R "$SRC/rootfs/." "$IRD/"
chmod 0755 "$IRD/init" "$IRD"/sbin/* "$IRD/etc/acpi/PWRF/00000080"
chmod 0700 "$IRD/root"
chmod 1777 "$IRD/tmp"
ln -s ../run "$IRD/var/run"
mknod -m 600 "$IRD/dev/console" c 5 1
mknod -m 666 "$IRD/dev/null" c 1 3
bbver=$("$BUSYBOX" 2>&1 || true)
bbver=$(sed -n '1s/^BusyBox \(v[^ ]*\).*/\1/p' <<<"$bbver")
# Fixed timestamps and sorted entries: same inputs, same initrd.img.
find "$IRD" -exec touch -h -d @0 {} +
cpio_opts=(--null -o -H newc -R 0:0 --quiet)
grep -q -- --reproducible <(cpio --help 2>&1) && cpio_opts+=(--reproducible)
(cd "$IRD" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio "${cpio_opts[@]}") | gzip -9 -n >"$WORK/initrd.img"
log "initramfs: busybox $bbver, $(find "$IRD" -mindepth 1 | wc -l) entries, $(($(stat -c %s "$WORK/initrd.img") / 1024)) KiB gzip"
cp "$VMLINUZ" "$WORK/vmlinuz"

# -- bootable disk ----------------------------------------------------------------------------
CMDLINE=$(sed -e 's/#.*//' "$SRC/cmdline" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//')
RAW=$WORK/disk.raw
offset=$((PART_START * 512))
truncate -s "${DISK_MIB}M" "$RAW"
printf 'label: dos\nlabel-id: 0x48505347\nstart=%d, type=e, bootable\n' "$PART_START" | sfdisk -q "$RAW" >/dev/null
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$RAW" bs=440 count=1 conv=notrunc status=none
part_kib=$(((DISK_MIB * 1048576 - offset) / 1024))
mkfs.vfat -F 16 -n HPGUEST -i 48505347 -h "$PART_START" --offset "$PART_START" "$RAW" "$part_kib" >/dev/null
sed "s|@CMDLINE@|$CMDLINE|" "$SRC/syslinux.cfg.in" >"$WORK/syslinux.cfg"
export MTOOLS_SKIP_CHECK=1
mcopy -i "$RAW@@$offset" "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/syslinux.cfg" ::/
syslinux --offset "$offset" --install "$RAW"
mdir -a -b -i "$RAW@@$offset" ::/ >"$WORK/mdir.txt"
grep -qi 'ldlinux.sys' "$WORK/mdir.txt" || die "syslinux did not install ldlinux.sys"
qemu-img convert -f raw -O qcow2 "$RAW" "$WORK/sample.qcow2"
rm -f "$RAW"
qemu-img check -q "$WORK/sample.qcow2" || die "qemu-img check failed on sample.qcow2"
log "disk: sample.qcow2 (${DISK_MIB} MiB virtual, $(($(stat -c %s "$WORK/sample.qcow2") / 1024)) KiB): MBR + FAT16 + syslinux, cmdline '$CMDLINE'"

# -- manifest ---------------------------------------------------------------------------------
sha() { sha256sum "$WORK/$1" | cut -c1-64; }
json_list() {
	local sep="" x
	printf '['
	for x in "$@"; do
		printf '%s"%s"' "$sep" "$x"
		sep=", "
	done
	printf ']'
}
files=(sample.qcow2 vmlinuz initrd.img)
{
	printf '{\n'
	printf '  "image": "sample",\n'
	printf '  "format": %d,\n' "$FORMAT"
	printf '  "kernelVersion": "%s",\n' "$KVER"
	printf '  "kernelPackage": "%s",\n' "$KPKG"
	printf '  "kernelPackageVersion": "%s",\n' "$KPKG_VERSION"
	printf '  "kernelCmdline": "%s",\n' "$CMDLINE"
	printf '  "busybox": "%s",\n' "$bbver"
	printf '  "modules": %s,\n' "$(json_list "${ORDER[@]}")"
	printf '  "disk": {"file": "sample.qcow2", "format": "qcow2", "virtualSizeBytes": %d, "boot": "SeaBIOS -> syslinux (MBR, FAT16 partition 1) -> Linux"},\n' $((DISK_MIB * 1048576))
	printf '  "files": %s,\n' "$(json_list "${files[@]}")"
	printf '  "sha256s": {'
	sep=""
	for f in "${files[@]}"; do
		printf '%s"%s": "%s"' "$sep" "$f" "$(sha "$f")"
		sep=", "
	done
	printf '},\n'
	printf '  "sizes": {'
	sep=""
	for f in "${files[@]}"; do
		printf '%s"%s": %d' "$sep" "$f" "$(stat -c %s "$WORK/$f")"
		sep=", "
	done
	printf '},\n'
	printf '  "console": "ttyS0",\n'
	printf '  "bootMarker": "%s",\n' "$BOOT_MARKER"
	printf '  "heartbeat": "hb <n>",\n'
	printf '  "disksLine": "hp.disks: <names>",\n'
	printf '  "dirtyParam": "hp.dirty=<MiB>",\n'
	printf '  "builtAt": "%s"\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	printf '}\n'
} >"$WORK/manifest.json"
(cd "$WORK" && sha256sum "${ARTIFACTS[@]}") >"$WORK/SHA256SUMS"
printf 'format=%s kernel=%s package=%s inputs=%s\n' "$FORMAT" "$KVER" "$KPKG_VERSION" "$INPUTS" >"$WORK/stamp"

# -- install ----------------------------------------------------------------------------------
# Each file is renamed into place (atomic per file; a QEMU that has the old sample.qcow2 open
# keeps reading the old inode). The stamp goes last: no stamp, no complete guest.
rm -f "$STAMP"
for f in "${ARTIFACTS[@]}" SHA256SUMS; do mv -f "$WORK/$f" "$OUT/$f"; done
mv -f "$WORK/stamp" "$STAMP"
cleanup
trap - EXIT
log "done: $OUT/{sample.qcow2,vmlinuz,initrd.img,manifest.json} in $(elapsed)"
