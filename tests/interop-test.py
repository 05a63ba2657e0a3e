#!/usr/bin/env python3
"""Postcopy recovery between our QEMU and an unmodified Debian QEMU 7.2.

For each direction (ours to reference, reference to ours) and each mode
(plain postcopy, postcopy-preempt): migrate through a TCP proxy, break the
link in the middle of postcopy, check that both sides pause, resume with
QMP migrate resume=true, check that both sides are active again, let the
migration complete, and check the guest memory on the destination page by
page.  One more case, ours to ours, pauses the destination with
migrate-pause and moves it to a new port with migrate-recover, both
executed out-of-band.  In the last case, two migrations pause and the
source of one tries to resume towards the destination of the other: it
is refused, with a clear error on both ends, and both migrations then
recover and complete.  Prints TAP.
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


async def pair(tl, work, qemu, tag):
    """A source and a destination, through a proxy, in postcopy-active."""
    bootsect = os.path.join(work, "bootsect" + tag)     # one image per pair
    write_bootsect(bootsect)
    dport = free_port()
    dst = Vm("dest" + tag, qemu, work, tl,
             ["-incoming", f"tcp:127.0.0.1:{dport}"])
    src = Vm("source" + tag, qemu, work, tl, [])
    proxy = Proxy(dport)
    await dst.start(bootsect)
    await src.start(bootsect)
    await wait_serial(src.serial)
    await proxy.start()
    for vm in (src, dst):
        await vm.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "postcopy-ram", "state": True}])
    await src.cmd("migrate-set-parameters",
                  **{"max-bandwidth": 30000000, "downtime-limit": 1,
                     "max-postcopy-bandwidth": 1 << 20})
    await src.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}")
    await src.wait_state(["active"])
    for _ in range(600):
        info = await src.cmd("query-migrate")
        if info.get("ram", {}).get("dirty-sync-count", 0) >= 2:
            break
        await asyncio.sleep(0.1)
    else:
        raise DemoError("precopy made no full pass")
    await src.cmd("migrate-start-postcopy")
    await states((src, dst), "postcopy-active")
    await dst.wait_running()
    return src, dst, proxy


async def complete(src, dst, work):
    await src.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
    await states((src, dst), "completed", bad=("failed",))
    await dst.cmd("stop")
    dump = os.path.join(work, dst.name + "-memory")
    await dst.cmd("pmemsave", val=MEM_START, size=MEM_END - MEM_START,
                  filename=dump)
    pages, bad = check_guest_memory(dump)
    if bad:
        raise DemoError(f"{dst.name}: {len(bad)} of {pages} pages wrong")
    return pages


async def other_migration_case(qemu, verbose):
    """Resume source A towards destination B, of another migration."""
    tl = Timeline()
    if not verbose:
        tl.log = lambda who, what: None
    work = tempfile.mkdtemp(prefix="postcopy-identity-")
    vms, proxies = [], []
    ok = False
    try:
        src_a, dst_a, proxy_a = await pair(tl, work, qemu, "-a")
        vms += [src_a, dst_a]
        proxies.append(proxy_a)
        src_b, dst_b, proxy_b = await pair(tl, work, qemu, "-b")
        vms += [src_b, dst_b]
        proxies.append(proxy_b)
        for p in proxies:
            p.break_links()
        await states(vms, "postcopy-paused")

        await src_a.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy_b.port}",
                        resume=True)
        await states((src_a, dst_b), "postcopy-recover")
        await states((src_a, dst_b), "postcopy-paused")
        want = ("Postcopy recovery refused by the destination: it is paused "
                "in another migration than this source's")
        desc = (await src_a.cmd("query-migrate")).get("error-desc")
        if desc != want:
            raise DemoError(f"source-a: error-desc {desc!r}")
        with open(dst_b.log_path, errors="replace") as f:
            if "refused a connection: it comes from another migration" \
                    not in f.read():
                raise DemoError("dest-b did not log the refusal")

        await src_a.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy_a.port}",
                        resume=True)
        await src_b.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy_b.port}",
                        resume=True)
        await states(vms, "postcopy-active", bad=("failed",))
        pages = await complete(src_a, dst_a, work)
        pages += await complete(src_b, dst_b, work)
        ok = True
        return f"refused with the expected errors; {pages} pages verified"
    finally:
        for p in proxies:
            await p.close()
        for vm in vms:
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
    # Not interop: a source resumes towards another migration's destination
    cases.append(("/identity/other-migration", args.ours, args.ours, False))
    print(f"1..{len(cases)}")
    failed = 0
    for i, (name, src, dst, preempt) in enumerate(cases, 1):
        if not os.access(args.ref, os.X_OK):
            print(f"not ok {i} {name} # reference QEMU missing: {args.ref}")
            failed += 1
            continue
        try:
            if name.startswith("/identity/"):
                what = asyncio.run(other_migration_case(src, args.verbose))
            else:
                what = asyncio.run(one_case(src, dst, preempt, args.verbose,
                                            oob=name.startswith("/qmp-oob/")))
            print(f"ok {i} {name} # {what}", flush=True)
        except (DemoError, ExecuteError, OSError) as e:
            print(f"not ok {i} {name} # {e}", flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
