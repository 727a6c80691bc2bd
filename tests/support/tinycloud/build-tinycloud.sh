#!/bin/bash
# Build a tiny BIOS+UEFI-bootable qcow2 that behaves like a cloud image:
# FAT "superfloppy" (no partition table) with syslinux (BIOS) + GRUB standalone (UEFI) + Debian cloud kernel + busybox/dropbear initramfs.
# usage: build-tinycloud.sh OUTDIR   (IGNORE_SEED=1: a variant whose /init ignores the seed's keys;
#        DUMP_MIB=N: a variant that prints what its disk holds at N MiB and what the seed's probe
#        URL answers, then powers off; UEFI=0: BIOS only; NAME: output file name)
# Needs: linux-image-cloud-amd64 busybox-static dropbear-bin syslinux mtools dosfstools qemu-utils cpio grub-efi-amd64-bin
set -euo pipefail
OUT=${1:-$PWD/build}
KVER=${KVER:-$(ls /boot/vmlinuz-*-cloud-amd64 | sort -V | tail -n1 | sed 's|/boot/vmlinuz-||')}
SRC=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
R=$W/root
mkdir -p "$OUT" $R/{bin,sbin,etc,proc,sys,dev,run,tmp,root,mnt,usr/bin,usr/sbin,lib/modules,etc/dropbear}

# busybox (static) + applet links
cp /bin/busybox $R/bin/busybox
for a in $(/bin/busybox --list); do [ -e $R/bin/$a ] || ln -s busybox $R/bin/$a; done

# dropbear + its shared libraries (found with ldd)
cp /usr/sbin/dropbear $R/usr/sbin/dropbear
for lib in $(ldd /usr/sbin/dropbear | grep -oE '/[^ ]+'); do
  mkdir -p $R$(dirname $lib); cp -L $lib $R$lib
done
# Debian uses /lib64/ld-linux-x86-64.so.2 as interpreter; /lib is a dir in the initramfs
[ -e $R/lib64/ld-linux-x86-64.so.2 ] || { mkdir -p $R/lib64; cp -L /lib64/ld-linux-x86-64.so.2 $R/lib64/; }

# kernel modules in dependency order (from modules.dep), flat in /lib/modules
MODDIR=/lib/modules/$KVER
: > $R/lib/modules/load.order
declare -A seen
add_mod() {  # $1 = module name
  local line path deps d
  line=$(grep -E "/${1//[_-]/[_-]}\.ko(\.xz|\.zst)?:" $MODDIR/modules.dep) || { echo "module $1 not found (built-in?)" >&2; return 0; }
  path=${line%%:*}; deps=${line#*:}
  for d in $deps; do add_mod "$(basename "$d" | sed -E 's/\.ko(\.xz|\.zst)?$//')"; done
  [ -n "${seen[$1]:-}" ] && return 0; seen[$1]=1
  case $path in
    *.ko.xz)  xz -dc $MODDIR/$path > $R/lib/modules/$1.ko ;;
    *.ko.zst) zstd -qdc $MODDIR/$path > $R/lib/modules/$1.ko ;;
    *)        cp $MODDIR/$path $R/lib/modules/$1.ko ;;
  esac
  echo "$1.ko" >> $R/lib/modules/load.order
}
for m in virtio_pci virtio_blk virtio_net virtio_scsi sr_mod isofs vfat nls_cp437 nls_ascii virtio_rng; do add_mod $m; done

# /init, DHCP hook, minimal account database
install -m 755 $SRC/init $R/init
install -m 755 $SRC/udhcpc.script $R/etc/udhcpc.script
echo 'root:x:0:0:root:/root:/bin/sh' > $R/etc/passwd
echo 'root:*:19000:0:99999:7:::'     > $R/etc/shadow   # locked password, key-only
echo 'root:x:0:'                     > $R/etc/group
printf '/bin/sh\n/bin/ash\n'         > $R/etc/shells
echo 'passwd: files'                 > $R/etc/nsswitch.conf
chmod 700 $R/root; chmod 600 $R/etc/shadow
[ "${IGNORE_SEED:-0}" = 1 ] && : > $R/etc/tinycloud-ignore-seed
[ -n "${DUMP_MIB:-}" ] && echo "$DUMP_MIB" > $R/etc/tinycloud-dump

(cd $R && find . | cpio -o -H newc --quiet) | gzip -9 > $W/initrd.gz

# FAT superfloppy with syslinux (BIOS)
cat > $W/syslinux.cfg <<CFG
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0,115200 panic=-1 quiet
CFG
truncate -s 64M $W/disk.raw
mkfs.vfat -n BOOT $W/disk.raw >/dev/null
syslinux --install $W/disk.raw
mcopy -i $W/disk.raw /boot/vmlinuz-$KVER ::vmlinuz
mcopy -i $W/disk.raw $W/initrd.gz ::initrd.gz
mcopy -i $W/disk.raw $W/syslinux.cfg ::syslinux.cfg
# UEFI: the same FAT filesystem also carries \EFI\BOOT\BOOTX64.EFI (the removable-media
# default path), a GRUB standalone image with an embedded config (needs grub-efi-amd64-bin).
if [ "${UEFI:-1}" = 1 ]; then
  cat > $W/grub-embed.cfg <<CFG
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
search --no-floppy --file --set=root /syslinux.cfg
linux /vmlinuz console=ttyS0,115200 panic=-1 quiet
initrd /initrd.gz
boot
CFG
  grub-mkstandalone -O x86_64-efi --locales= --themes= --fonts= \
    --install-modules="linux normal search search_fs_file fat part_msdos part_gpt serial terminal echo configfile" \
    --modules="linux search search_fs_file fat part_msdos part_gpt serial" \
    -o $W/BOOTX64.EFI "boot/grub/grub.cfg=$W/grub-embed.cfg"
  mmd -i $W/disk.raw ::EFI ::EFI/BOOT
  mcopy -i $W/disk.raw $W/BOOTX64.EFI ::EFI/BOOT/BOOTX64.EFI
fi
qemu-img convert -f raw -O qcow2 -c $W/disk.raw "$OUT/${NAME:-tinycloud.qcow2}"
