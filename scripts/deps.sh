#!/bin/bash
# Install the Debian packages the project needs (build, tests, demo).
# With "check" as argument, only report whether anything is missing.
set -euo pipefail

PACKAGES=(
    # fetching and unpacking the Debian source package
    dpkg-dev xz-utils ca-certificates
    # building QEMU
    gcc make ninja-build meson pkg-config python3 python3-venv flex bison
    libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev libslirp-dev
    libgnutls28-dev ccache git perl
    # firmware for the built binary (qemu-system-data: the option ROMs
    # that the dfsg source lacks, such as linuxboot_dma.bin for -kernel)
    seabios ipxe-qemu qemu-system-data
    # demo and network tests
    socat iproute2 nftables procps
    # the figures of the demo and the bench (harness/figures.py)
    gnuplot-nox
    # the test guest (guest/build-guest.sh; its kernel is downloaded, not
    # installed)
    busybox-static cpio
    # two libvirt hosts (tests/libvirt-test.py, demo/libvirt-demo.py):
    # libvirtd, its QEMU driver and virsh, without systemd
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
         grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${1:-}" = check ]; then
    [ ${#missing[@]} -eq 0 ]
    exit
fi
if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all Debian packages present"
    exit 0
fi

echo "deps: installing ${missing[*]}"
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done"
