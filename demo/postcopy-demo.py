#!/usr/bin/env python3
"""Postcopy link failure demo: the seed experiment, end to end.

Two QEMUs on this machine, a source and a destination, connected through a
socat TCP bridge on the original migration channel.  The guest (QEMU's
a-b boot block) keeps incrementing one byte of every page of 1-100 MiB.
Postcopy is started, then the bridge is killed in the middle of postcopy.

Without recovery the migration fails and the VM is lost.  With the
postcopy recovery series both sides pause, the source is told to resume
with HMP "migrate -r -d" to the destination's original port, and the
migration completes.  The guest memory on the destination is then checked
page by page.

    port B  +---------------+
    +-----> | socat bridge  |-------+   (killed mid-postcopy)
    |       +---------------+       |
    |                               v port D
 +--------+   recovery channel   +--------+
 | source |--------------------->|  dest  |
 +--------+                      +--------+
"""

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from postcopy_harness import (  # noqa: E402
    TREE, MEM_START, MEM_END, QMP_TIMEOUT, DemoError, Timeline, Vm,
    ExecuteError, check_guest_memory, enter_postcopy, free_port,
    is_listening, wait_serial, write_bootsect)


async def run(args):
    tl = Timeline()
    work = tempfile.mkdtemp(prefix="postcopy-demo-")
    bootsect = os.path.join(work, "bootsect")
    write_bootsect(bootsect)
    dport, bport = free_port(), free_port()

    src = Vm("source", args.qemu, work, tl, [])
    dst = Vm("dest", args.qemu, work, tl,
             ["-incoming", f"tcp:127.0.0.1:{dport}"])
    bridge = None
    outcome = "error"
    try:
        print(f"Work directory {work}; destination listens on port {dport},"
              f" the bridge on port {bport}")
        print("Timeline:")
        await dst.start(bootsect)
        await src.start(bootsect)
        tl.log("demo", "both QEMUs up")
        await wait_serial(src.serial)
        tl.log("demo", "guest runs on the source")

        bridge = await asyncio.create_subprocess_exec(
            "socat", f"TCP-LISTEN:{bport},bind=127.0.0.1,reuseaddr",
            f"TCP:127.0.0.1:{dport}", start_new_session=True)
        tl.log("bridge", f"socat 127.0.0.1:{bport} -> 127.0.0.1:{dport}")
        deadline = time.monotonic() + QMP_TIMEOUT
        while not is_listening(bport):
            if time.monotonic() > deadline:
                raise DemoError("socat bridge does not listen")
            await asyncio.sleep(0.05)

        # One full pass of precopy through the bridge, then postcopy,
        # slowed down so that the failure lands in the middle of it.
        tl.log("demo", "migrate through the bridge")
        await enter_postcopy(src, dst, f"tcp:127.0.0.1:{bport}",
                             postcopy_bw=args.postcopy_bw)
        tl.log("dest", "the guest runs here now")
        await asyncio.sleep(args.fail_after)

        t_fail = tl.mark("failure")
        bridge.send_signal(signal.SIGKILL)
        tl.log("bridge", "killed (SIGKILL): the link is down")
        await bridge.wait()

        s = await src.wait_state(["postcopy-paused", "failed", "completed"])
        d = await dst.wait_state(["postcopy-paused", "failed", "completed"])
        if s == "completed":
            raise DemoError("postcopy completed before the failure; "
                            "lower --postcopy-bw")
        if s != "postcopy-paused" or d != "postcopy-paused":
            outcome = "lost"
            # The destination holds the only running guest: is it gone?
            if dst.exited is None:
                await dst.wait_state([], timeout=30)
            print()
            print(f"OUTCOME: VM LOST. The source is '{src.state}' with the "
                  f"guest stopped, the destination {dst.state}.")
            print("  Pages not yet migrated existed only on the source; "
                  "the running guest was on the destination.")
            return outcome

        tl.log("demo", "both sides paused: the guest waits on missing "
               "pages, nothing is lost")
        # Stay paused for a while, as a real outage would, and look at
        # the guest meanwhile.
        await asyncio.sleep(args.pause_for)
        st = await dst.cmd("query-status")
        tl.log("dest", f"guest run state while paused: {st['status']}")
        await src.cmd("migrate-set-parameters",
                      **{"max-postcopy-bandwidth": 0})
        t_resume = tl.mark("resume")
        out = await src.hmp(f"migrate -r -d tcp:127.0.0.1:{dport}")
        tl.log("source", f"HMP migrate -r -d tcp:127.0.0.1:{dport}"
               + (f": {out}" if out else ""))
        await src.wait_state(["postcopy-active", "completed"])
        t_active = tl.mark("active")
        await src.wait_state(["completed"])
        await dst.wait_state(["completed"])
        tl.mark("completed")

        await dst.cmd("stop")
        dump = os.path.join(work, "dest-memory")
        await dst.cmd("pmemsave", val=MEM_START, size=MEM_END - MEM_START,
                      filename=dump)
        pages, bad = check_guest_memory(dump)
        print()
        print(f"Paused: source {src.paused_time():.3f}s, "
              f"destination {dst.paused_time():.3f}s; link failure to "
              f"pause detected on the source in "
              f"{pause_delay(src, t_fail):.3f}s")
        print(f"Recovery: 'migrate -r' to postcopy-active took "
              f"{t_active - t_resume:.3f}s")
        if bad:
            for addr, prev, b in bad[:10]:
                print(f"  bad page at 0x{addr:x}: {b} after {prev}")
            print(f"OUTCOME: FAILED. {len(bad)} of {pages} pages are wrong.")
            outcome = "corrupt"
        else:
            print(f"OUTCOME: RECOVERED. Guest memory verified on the "
                  f"destination: {pages} pages, all consistent.")
            outcome = "recovered"
        return outcome
    finally:
        if bridge and bridge.returncode is None:
            bridge.kill()
            await bridge.wait()
        for vm in (src, dst):
            await vm.stop()
        if args.keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def pause_delay(vm, t_fail):
    for t, st in vm.history:
        if st == "postcopy-paused" and t >= t_fail:
            return t - t_fail
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qemu", default=os.path.join(
        TREE, "build", "qemu-system-x86_64"))
    ap.add_argument("--postcopy-bw", type=int, default=4 << 20,
                    help="postcopy bandwidth limit before the failure "
                    "(bytes/s)")
    ap.add_argument("--fail-after", type=float, default=1.0,
                    help="seconds of postcopy before the bridge is killed")
    ap.add_argument("--pause-for", type=float, default=2.0,
                    help="seconds to stay paused before resuming")
    ap.add_argument("--expect", choices=["recovered", "lost"],
                    help="exit non-zero unless this is the outcome")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (logs, dumps)")
    args = ap.parse_args()
    if not shutil.which("socat"):
        print("demo: socat is missing (make deps)", file=sys.stderr)
        return 2
    print(__doc__)
    try:
        outcome = asyncio.run(run(args))
    except (DemoError, ExecuteError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    if args.expect and outcome != args.expect:
        print(f"demo: expected '{args.expect}', got '{outcome}'",
              file=sys.stderr)
        return 1
    return 0 if outcome in ("recovered", "lost") else 1


if __name__ == "__main__":
    sys.exit(main())
