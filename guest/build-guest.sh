#!/bin/bash
# Build the test guest in build/guest: Debian's kernel (vmlinuz, taken from
# the linux-image package that linux-image-amd64 points to, downloaded, not
# installed) and an initramfs (initrd.img) with busybox and memcheck, the
# guest's own check of its memory, as init.  Does nothing when both are
# newer than their sources.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$top/build/guest
mkdir -p "$out/cache"

if [ -f "$out/vmlinuz" ] && [ "$out/initrd.img" -nt "$top/guest/memcheck.c" ] &&
   [ "$out/initrd.img" -nt "$0" ]; then
    exit 0
fi

if [ ! -f "$out/vmlinuz" ]; then
    pkg=$(apt-cache depends linux-image-amd64 |
          awk '/Depends: linux-image-/ { print $2; exit }')
    [ -n "$pkg" ] || { echo "guest: no linux-image-amd64 in apt" >&2; exit 1; }
    echo "guest: downloading $pkg"
    (cd "$out/cache" && apt-get download -qq "$pkg" 2>&1 |
        grep -v "unsandboxed as root" || true)
    deb=$(ls "$out/cache/${pkg}"_*.deb | head -1)
    dpkg-deb --fsys-tarfile "$deb" |
        tar -x -C "$out/cache" --wildcards './boot/vmlinuz-*'
    cp "$out"/cache/boot/vmlinuz-* "$out/vmlinuz"
fi

root=$out/initramfs
rm -rf "$root"
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys"
cp /bin/busybox "$root/bin/busybox"
gcc -O2 -static -Wall -o "$root/bin/memcheck" "$top/guest/memcheck.c"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
echo "guest: up, $(/bin/busybox nproc) vCPU, $(/bin/busybox free -m | /bin/busybox awk '/Mem:/ { print $2 }') MiB"
exec /bin/memcheck
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.img.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
echo "guest: $out/vmlinuz, $out/initrd.img"
