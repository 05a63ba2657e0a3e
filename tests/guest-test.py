#!/usr/bin/env python3
"""A real Linux guest across postcopy failures: the guest checks its memory.

The guest (guest/: Debian's kernel, busybox, memcheck) rewrites 256 MiB of
its memory pass after pass, checking every word against the previous pass
first, and prints each pass on its serial console.  Each case migrates it
in postcopy through a proxy that fails, and ends with the migration
completed, the guest still counting passes on the destination from where
it stopped on the source, and no pass found wrong memory on either side.

  /guest/auto-recover/flaps  postcopy-auto-recover given with -global, as a
                             management stack would: the link goes down
                             (connections refused) and comes back five
                             times; no command resumes it
  /guest/operator/link-failure  the link breaks; QMP migrate resume=true
                             over the same URI, as an operator would

Prints TAP; each result line gives the passes seen on each side.
"""

import asyncio
import os
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "harness"))
import guest  # noqa: E402
from postcopy_harness import (  # noqa: E402
    DemoError, Proxy, STATE_TIMEOUT, Vm, enter_postcopy, free_port, run_tap,
    states, test_options)

OURS = os.path.join(TOP, "build/qemu/build/qemu-system-x86_64")
REF = os.path.join(TOP, "build/ref/build/qemu-system-x86_64")

FLAPS = 5
AUTO_RECOVER_MS = 120000
POSTCOPY_BW = 4 << 20     # slow enough that the failures land in postcopy


async def migrate_guest(work, tl, qemu, src_extra, scenario):
    """Boot the guest on a source, migrate it in postcopy through a proxy,
    run @scenario(src, dst, proxy, uri), complete, and check the guest's
    own verdict on both consoles."""
    dport = free_port()
    dst = Vm("dest", qemu, work, tl,
             ["-incoming", f"tcp:127.0.0.1:{dport}"] + guest.qemu_args(),
             mem=guest.GUEST_MEM)
    src = Vm("source", qemu, work, tl, guest.qemu_args() + list(src_extra),
             mem=guest.GUEST_MEM)
    src_console = guest.Console(src.serial, "source")
    dst_console = guest.Console(dst.serial, "destination")
    proxy = Proxy(dport)
    try:
        await dst.start()
        await src.start()
        await src_console.wait_passes(2)
        await proxy.start()
        uri = f"tcp:127.0.0.1:{proxy.port}"
        await enter_postcopy(src, dst, uri, postcopy_bw=POSTCOPY_BW)
        what = await scenario(src, dst, proxy, uri)

        await src.cmd("migrate-set-parameters",
                      **{"max-postcopy-bandwidth": 0})
        await states((src, dst), "completed", bad=("failed",))
        last_src = src_console.last()
        src_console.check()
        # The same guest goes on counting on the destination
        last_dst = await dst_console.wait_passes(3, after=last_src)
        first_dst = dst_console.passes()[0][0]
        if first_dst != last_src + 1:
            raise DemoError(f"the guest printed pass {last_src} on the "
                            f"source, then pass {first_dst} on the "
                            f"destination")
        return (f"{what}; memcheck passes 1-{last_src} on the source, "
                f"{first_dst}-{last_dst} on the destination, all ok")
    finally:
        await proxy.close()
        for vm in (src, dst):
            await vm.stop()


async def auto_recover_flaps(work, tl, qemu):
    async def flaps(src, dst, proxy, uri):
        attempts = 0
        for _ in range(FLAPS):
            marks = (len(src.history), len(dst.history))
            await proxy.set_down(True)
            await states((src, dst), "postcopy-paused")
            # An attempt of this pause failed: the count restarts at 0
            # with each pause, as "retrying" begins
            deadline = time.monotonic() + STATE_TIMEOUT
            while True:
                info = await src.cmd("query-migrate")
                ar = info.get("postcopy-auto-recover", {})
                if ar.get("status") == "retrying" and ar["attempts"] >= 1:
                    attempts += ar["attempts"]
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"no automatic attempt: {ar}")
                await asyncio.sleep(0.05)
            await proxy.set_down(False)
            for vm, start in zip((src, dst), marks):
                await vm.wait_sequence(start, ["postcopy-paused",
                                               "postcopy-active"])
            await states((src, dst), "postcopy-active")
        return (f"{FLAPS} link failures recovered with no command "
                f"({attempts} automatic attempts)")

    return await migrate_guest(
        work, tl, qemu,
        ["-global", f"migration.postcopy-auto-recover={AUTO_RECOVER_MS}"],
        flaps)


async def operator_link_failure(work, tl, qemu):
    async def link_failure(src, dst, proxy, uri):
        proxy.break_links()
        await states((src, dst), "postcopy-paused")
        await src.cmd("migrate", uri=uri, resume=True)
        await states((src, dst), "postcopy-active")
        return "link broken, resumed with QMP migrate resume=true"

    return await migrate_guest(work, tl, qemu, [], link_failure)


def main():
    args = test_options(__doc__, OURS, REF)
    guest.build()
    cases = [
        ("/guest/auto-recover/flaps", auto_recover_flaps, args.ours),
        ("/guest/operator/link-failure", operator_link_failure, args.ours),
    ]
    return run_tap(cases, args.verbose, args.prefix, need=(args.ours,))


if __name__ == "__main__":
    sys.exit(main())
