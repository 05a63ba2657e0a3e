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

Act two does it again without an operator: a new source started with
-global migration.postcopy-auto-recover=60000 migrates through the
bridge, the bridge is killed, and started again on the same port a few
seconds later.  Nobody types a command: the source resumes by itself
once the bridge is back, the migration completes, and the memory is
checked again.  (--act 1 or --act 2 runs one act alone.)

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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "harness"))
import figures  # noqa: E402
from postcopy_harness import (  # noqa: E402
    TREE, MEM_START, MEM_END, QMP_TIMEOUT, DemoError, Timeline, Vm,
    ExecuteError, check_guest_memory, enter_postcopy, free_port,
    is_listening, wait_serial, write_bootsect)


async def start_bridge(tl, bport, dport):
    """socat from 127.0.0.1:@bport to the destination's port @dport"""
    bridge = await asyncio.create_subprocess_exec(
        "socat", f"TCP-LISTEN:{bport},bind=127.0.0.1,reuseaddr,fork",
        f"TCP:127.0.0.1:{dport}", start_new_session=True)
    tl.log("bridge", f"socat 127.0.0.1:{bport} -> 127.0.0.1:{dport}")
    deadline = time.monotonic() + QMP_TIMEOUT
    while not is_listening(bport):
        if time.monotonic() > deadline:
            raise DemoError("socat bridge does not listen")
        await asyncio.sleep(0.05)
    return bridge


async def kill_bridge(tl, bridge):
    """SIGKILL the bridge and every connection it forwards"""
    t = tl.now()
    os.killpg(bridge.pid, signal.SIGKILL)
    tl.log("bridge", "killed (SIGKILL): the link is down")
    await bridge.wait()
    return t


async def run(args):
    tl = Timeline()
    work = tempfile.mkdtemp(prefix="postcopy-demo-")
    try:
        outcome = "recovered"
        if args.act in (0, 1):
            outcome = await act_operator(args, tl, work)
        if args.act in (0, 2) and outcome == "recovered":
            outcome = await act_unattended(args, tl, work)
        return outcome
    finally:
        if args.figure and args.panels:
            try:
                path = figures.timeline(args.figure, args.panels,
                                        "Postcopy link failure: migration "
                                        "states of both sides, and the link")
                print(f"Timeline figure: {path}")
            except figures.FigureError as e:
                print(f"demo: no figure: {e}", file=sys.stderr)
        if args.keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


async def check_memory(dst, work):
    """Dump the guest memory on @dst and check it; prints the verdict."""
    await dst.cmd("stop")
    dump = os.path.join(work, "dest-memory")
    await dst.cmd("pmemsave", val=MEM_START, size=MEM_END - MEM_START,
                  filename=dump)
    pages, bad = check_guest_memory(dump)
    if bad:
        for addr, prev, b in bad[:10]:
            print(f"  bad page at 0x{addr:x}: {b} after {prev}")
        print(f"OUTCOME: FAILED. {len(bad)} of {pages} pages are wrong.")
        return "corrupt"
    print(f"OUTCOME: RECOVERED. Guest memory verified on the "
          f"destination: {pages} pages, all consistent.")
    return "recovered"


async def act_operator(args, tl, work):
    """Act one: the 2017 experiment, resumed by an operator."""
    bootsect = os.path.join(work, "bootsect")
    write_bootsect(bootsect)
    dport, bport = free_port(), free_port()

    src = Vm("source", args.qemu, work, tl, [])
    dst = Vm("dest", args.qemu, work, tl,
             ["-incoming", f"tcp:127.0.0.1:{dport}"])
    bridge = None
    outcome = "error"
    try:
        print(f"Act one: an operator resumes.  Work directory {work}; "
              f"destination listens on port {dport}, the bridge on port "
              f"{bport}")
        print("Timeline:")
        await dst.start(bootsect)
        await src.start(bootsect)
        tl.log("demo", "both QEMUs up")
        await wait_serial(src.serial)
        tl.log("demo", "guest runs on the source")

        bridge = await start_bridge(tl, bport, dport)

        # One full pass of precopy through the bridge, then postcopy,
        # slowed down so that the failure lands in the middle of it.
        tl.log("demo", "migrate through the bridge")
        t_start = tl.now()
        await enter_postcopy(src, dst, f"tcp:127.0.0.1:{bport}",
                             postcopy_bw=args.postcopy_bw)
        tl.log("dest", "the guest runs here now")
        await asyncio.sleep(args.fail_after)

        t_fail = await kill_bridge(tl, bridge)

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
            args.panels.append(("Act one: the bridge is killed; without "
                                "recovery", t_start, tl.now(),
                                src.history, dst.history, [(t_fail, None)]))
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
        args.panels.append(("Act one: the bridge is killed; an operator "
                            "resumes to the destination's port",
                            t_start, tl.now() + 0.2, src.history,
                            dst.history, [(t_fail, t_resume)]))

        print()
        print(f"Paused: source {src.paused_time():.3f}s, "
              f"destination {dst.paused_time():.3f}s; link failure to "
              f"pause detected on the source in "
              f"{pause_delay(src, t_fail):.3f}s")
        print(f"Recovery: 'migrate -r' to postcopy-active took "
              f"{t_active - t_resume:.3f}s")
        return await check_memory(dst, work)
    finally:
        if bridge and bridge.returncode is None:
            bridge.kill()
            await bridge.wait()
        for vm in (src, dst):
            await vm.stop()


async def act_unattended(args, tl, work):
    """Act two: the bridge comes back, and the source resumes by itself."""
    bootsect = os.path.join(work, "bootsect2")
    write_bootsect(bootsect)
    dport, bport = free_port(), free_port()
    src = Vm("source2", args.qemu, work, tl,
             ["-global", "migration.postcopy-auto-recover=60000"])
    dst = Vm("dest2", args.qemu, work, tl,
             ["-incoming", f"tcp:127.0.0.1:{dport}"])
    bridge = None
    try:
        print()
        print(f"Act two: nobody resumes.  The source runs with -global "
              f"migration.postcopy-auto-recover=60000; destination port "
              f"{dport}, bridge port {bport}")
        print("Timeline:")
        await dst.start(bootsect)
        await src.start(bootsect)
        await wait_serial(src.serial)
        tl.log("demo", "guest runs on the source")
        bridge = await start_bridge(tl, bport, dport)
        t_start = tl.now()
        await enter_postcopy(src, dst, f"tcp:127.0.0.1:{bport}",
                             postcopy_bw=args.postcopy_bw)
        tl.log("dest2", "the guest runs here now")
        await asyncio.sleep(args.fail_after)

        t_fail = await kill_bridge(tl, bridge)
        for vm in (src, dst):
            if await vm.wait_state(["postcopy-paused", "failed",
                                    "completed"]) != "postcopy-paused":
                raise DemoError(f"{vm.name} is '{vm.state}', not paused")
        tl.log("demo", f"both sides paused; the link stays down for "
               f"{args.down_for:.1f}s, and nobody types anything")
        await asyncio.sleep(args.down_for)
        info = await src.cmd("query-migrate")
        ar = info.get("postcopy-auto-recover", {})
        tl.log("source2", f"automatic recovery: {ar.get('status')}, "
               f"{ar.get('attempts')} attempts so far")
        marks = (len(src.history), len(dst.history))
        bridge = await start_bridge(tl, bport, dport)
        t_back = tl.now()
        tl.log("bridge", "back on its port")
        for vm, start in zip((src, dst), marks):
            await vm.wait_sequence(start, ["postcopy-active"])
        back = max(vm.history[-1][0] for vm in (src, dst)) - t_back
        info = await src.cmd("query-migrate")
        attempts = info.get("postcopy-auto-recover", {}).get("attempts")
        await src.cmd("migrate-set-parameters",
                      **{"max-postcopy-bandwidth": 0})
        for vm in (src, dst):
            await vm.wait_state(["completed"])
        args.panels.append(("Act two: the bridge is killed, and back "
                            f"{t_back - t_fail:.1f} s later; nobody types "
                            "anything", t_start, tl.now() + 0.2,
                            src.history, dst.history, [(t_fail, t_back)]))
        print()
        print(f"Link down {t_back - t_fail:.3f}s; paused: source "
              f"{src.paused_time():.3f}s, destination "
              f"{dst.paused_time():.3f}s")
        print(f"Stall after the link came back: both sides postcopy-active "
              f"{back:.3f}s later, at attempt {attempts}, with no command")
        return await check_memory(dst, work)
    finally:
        if bridge and bridge.returncode is None:
            os.killpg(bridge.pid, signal.SIGKILL)
            await bridge.wait()
        for vm in (src, dst):
            await vm.stop()


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
    ap.add_argument("--down-for", type=float, default=3.0,
                    help="act two: seconds the bridge stays down")
    ap.add_argument("--act", type=int, choices=[0, 1, 2], default=0,
                    help="run act one or two alone (0: both)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (logs, dumps)")
    ap.add_argument("--figure", default=os.path.join(
        os.path.dirname(TREE), "demo-timeline.svg"),
                    help="the timeline figure: SVG, or PNG if it ends in "
                    ".png ('' for none)")
    args = ap.parse_args()
    args.panels = []
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
