#!/bin/bash
# Turn tinycloud.qcow2 into a Secure-Boot-capable variant: shim (MS-signed) -> grub (Debian-signed)
# -> vmlinuz (Debian-signed). Needs the .deb contents of shim-signed and grub-efi-amd64-signed.
set -euo pipefail
IN=$1 OUTQ=$2 X=$3   # X = dir where shim-signed + grub-efi-amd64-signed debs were dpkg-deb -x'ed
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
qemu-img convert -O raw "$IN" $W/disk.raw
cat > $W/grub.cfg <<CFG
set timeout=0
linux /vmlinuz console=ttyS0,115200 panic=-1 quiet
initrd /initrd.gz
boot
CFG
mdel -i $W/disk.raw ::EFI/BOOT/BOOTX64.EFI 2>/dev/null || true
mmd -i $W/disk.raw ::EFI/debian 2>/dev/null || true
mcopy -o -i $W/disk.raw $X/usr/lib/shim/shimx64.efi.signed ::EFI/BOOT/BOOTX64.EFI
mcopy -o -i $W/disk.raw $X/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed ::EFI/BOOT/grubx64.efi
mcopy -o -i $W/disk.raw $W/grub.cfg ::EFI/BOOT/grub.cfg
mcopy -o -i $W/disk.raw $W/grub.cfg ::EFI/debian/grub.cfg
qemu-img convert -f raw -O qcow2 -c $W/disk.raw "$OUTQ"
