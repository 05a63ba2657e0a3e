#!/usr/bin/env python3
"""Postcopy recovery between our QEMU and an unmodified Debian QEMU 7.2.

For each direction (ours to reference, reference to ours) and each mode
(plain postcopy, postcopy-preempt): migrate through a TCP proxy, break the
link in the middle of postcopy, check that both sides pause, resume with
QMP migrate resume=true, check that both sides are active again, let the
migration complete, and check the guest memory on the destination page by
page.  One more case, ours to ours, pauses the destination with
migrate-pause and moves it to a new port with migrate-recover, both
executed out-of-band.  Prints TAP.
"""

import argparse
import asyncio
import os
import shutil
import sys
import tempfile

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "demo"))
from postcopy_harness import (  # noqa: E402
    MEM_END, MEM_START, QMP_TIMEOUT, DemoError, ExecuteError, Proxy, Timeline,
    Vm, check_guest_memory, free_port, wait_serial, write_bootsect)

OURS = os.path.join(TOP, "build/qemu/build/qemu-system-x86_64")
REF = os.path.join(TOP, "build/ref/build/qemu-system-x86_64")


async def states(vms, goal, bad=("failed", "completed")):
    for vm in vms:
        st = await vm.wait_state([goal] + list(bad))
        if st != goal:
            raise DemoError(f"{vm.name} reached '{st}', expected '{goal}'")


async def one_case(src_bin, dst_bin, preempt, verbose, oob=False):
    tl = Timeline()
    if not verbose:
        tl.log = lambda who, what: None
    work = tempfile.mkdtemp(prefix="postcopy-interop-")
    bootsect = os.path.join(work, "bootsect")
    write_bootsect(bootsect)
    dport = free_port()
    dst = Vm("dest", dst_bin, work, tl,
             ["-incoming", f"tcp:127.0.0.1:{dport}"])
    src = Vm("source", src_bin, work, tl, [])
    proxy = Proxy(dport)
    ok = False
    try:
        await dst.start(bootsect)
        await src.start(bootsect)
        await wait_serial(src.serial)
        await proxy.start()
        caps = [{"capability": "postcopy-ram", "state": True}]
        if preempt:
            caps.append({"capability": "postcopy-preempt", "state": True})
        for vm in (src, dst):
            await vm.cmd("migrate-set-capabilities", capabilities=caps)
        # Precopy must not converge, postcopy must not end before the break
        await src.cmd("migrate-set-parameters",
                      **{"max-bandwidth": 30000000, "downtime-limit": 1,
                         "max-postcopy-bandwidth": 1 << 20})
        uri = f"tcp:127.0.0.1:{proxy.port}"
        await src.cmd("migrate", uri=uri)
        await src.wait_state(["active"])
        for _ in range(int(60 / 0.1)):
            info = await src.cmd("query-migrate")
            if info.get("ram", {}).get("dirty-sync-count", 0) >= 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise DemoError("precopy made no full pass")
        await src.cmd("migrate-start-postcopy")
        await states((src, dst), "postcopy-active")
        # Until the guest runs on the destination, a failure is not postcopy's
        await dst.wait_running()

        if oob:
            # Out-of-band, as when the main loop waits on a missing page
            await dst.cmd("migrate-pause", oob=True)
            await states((src, dst), "postcopy-paused")
            uri = f"tcp:127.0.0.1:{free_port()}"
            await dst.cmd("migrate-recover", uri=uri, oob=True)
        else:
            proxy.break_links()
            await states((src, dst), "postcopy-paused")

        await src.cmd("migrate", uri=uri, resume=True)
        await states((src, dst), "postcopy-active", bad=("failed",))
        await src.cmd("migrate-set-parameters",
                      **{"max-postcopy-bandwidth": 0})
        await states((src, dst), "completed", bad=("failed",))

        await dst.cmd("stop")
        dump = os.path.join(work, "dest-memory")
        await dst.cmd("pmemsave", val=MEM_START, size=MEM_END - MEM_START,
                      filename=dump)
        pages, bad = check_guest_memory(dump)
        if bad:
            raise DemoError(f"{len(bad)} of {pages} pages wrong, first at "
                            f"0x{bad[0][0]:x}")
        ok = True
        return f"{pages} pages verified"
    finally:
        await proxy.close()
        for vm in (src, dst):
            await vm.stop()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"# logs kept in {work}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours", default=OURS)
    ap.add_argument("--ref", default=REF)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    cases = []
    for mode in ("plain", "preempt"):
        cases.append((f"/interop/ours-to-ref/{mode}", args.ours, args.ref,
                      mode == "preempt"))
        cases.append((f"/interop/ref-to-ours/{mode}", args.ref, args.ours,
                      mode == "preempt"))
    # Not interop: our commands out-of-band, through QEMU's QMP library
    cases.append(("/qmp-oob/pause-recover", args.ours, args.ours, False))
    print(f"1..{len(cases)}")
    failed = 0
    for i, (name, src, dst, preempt) in enumerate(cases, 1):
        if not os.access(args.ref, os.X_OK):
            print(f"not ok {i} {name} # reference QEMU missing: {args.ref}")
            failed += 1
            continue
        try:
            what = asyncio.run(one_case(src, dst, preempt, args.verbose,
                                        oob=name.startswith("/qmp-oob/")))
            print(f"ok {i} {name} # {what}", flush=True)
        except (DemoError, ExecuteError, OSError) as e:
            print(f"not ok {i} {name} # {e}", flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
