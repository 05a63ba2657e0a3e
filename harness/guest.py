"""The test guest: Debian's Linux kernel with memcheck as init.

guest/build-guest.sh builds it into build/guest.  memcheck (guest/memcheck.c)
rewrites MEMCHECK_MB MiB of the guest's memory pass after pass, checking
each word against what the previous pass wrote first, and prints a line a
pass on the serial console: "memcheck: pass N ok" or "memcheck: pass N
BAD: ...".  The guest thus checks its own memory, wherever it runs; a
migration that lost a page, or delivered a stale one, shows as BAD.
"""

import asyncio
import os
import re
import subprocess
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = os.path.join(TOP, "build", "guest", "vmlinuz")
INITRD = os.path.join(TOP, "build", "guest", "initrd.img")
BUILD = os.path.join(TOP, "guest", "build-guest.sh")

MEMCHECK_MB = 256        # what memcheck rewrites, pass after pass
GUEST_MEM = "384M"       # the guest's RAM

PASS_RE = re.compile(rb"memcheck: pass (\d+) (ok|BAD[^\r\n]*)")


class GuestError(Exception):
    pass


def build():
    """Build the guest if needed (downloads the kernel package once)."""
    subprocess.run([BUILD], check=True)


def boot_files(mb=MEMCHECK_MB):
    """kernel, initrd, kernel command line"""
    return (KERNEL, INITRD,
            f"console=ttyS0 quiet panic=-1 memcheck_mb={mb}")


def qemu_args(mb=MEMCHECK_MB):
    """The QEMU options that boot the guest (besides -m GUEST_MEM)."""
    kernel, initrd, append = boot_files(mb)
    return ["-kernel", kernel, "-initrd", initrd, "-append", append]


class Console:
    """What memcheck printed on a serial console written to a file."""

    def __init__(self, path, name):
        self.path = path
        self.name = name

    def passes(self):
        """[(pass number, True if ok)] in the order printed."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        return [(int(m.group(1)), m.group(2) == b"ok")
                for m in PASS_RE.finditer(data)]

    def bad(self):
        return [n for n, ok in self.passes() if not ok]

    def last(self):
        passes = self.passes()
        return passes[-1][0] if passes else 0

    def check(self):
        """Raise GuestError if the guest found a bad word here."""
        bad = self.bad()
        if bad:
            raise GuestError(f"{self.name}: the guest found wrong memory "
                             f"in pass {bad[0]} (see {self.path})")

    async def wait_passes(self, count, after=0, timeout=120.0):
        """Wait until @count passes numbered above @after were printed
        here, all ok.  Returns the number of the last one."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            done = [n for n, _ in self.passes() if n > after]
            if len(done) >= count:
                return done[-1]
            if time.monotonic() > deadline:
                raise GuestError(f"{self.name}: {len(done)} of {count} "
                                 f"memcheck passes after pass {after} in "
                                 f"{timeout:.0f} s")
            await asyncio.sleep(0.1)
