#!/usr/bin/env python3
"""libvirt drives a postcopy migration through a link failure, and resumes it.

Two libvirt hosts on this machine (harness/libvirt_hosts.py: two libvirtd
of Debian 12, each in its own network and mount namespace, joined by a
veth pair), a real Linux guest that checks its own memory
(harness/guest.py).  The demo types the virsh commands an operator types,
prints what libvirt shows on both hosts after each, and ends with the
guest's verdict.  With --auto, nobody types the resume: the domain XML
enables postcopy-auto-recover, and libvirt finishes the migration by
itself.  Needs root.
"""

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "harness"))
import guest  # noqa: E402
import libvirt_hosts as lv  # noqa: E402
from libvirt_migration import with_migration  # noqa: E402
from postcopy_harness import DemoError  # noqa: E402

OURS = os.path.join(TOP, "build/qemu/build/qemu-system-x86_64")
T0 = time.monotonic()


def say(what):
    print(f"[{time.monotonic() - T0:6.1f}s] {what}", flush=True)


async def show(mig):
    a = await mig.a.state(lv.DOMAIN) or "(no domain)"
    b = await mig.b.state(lv.DOMAIN) or "(no domain)"
    say(f"    virsh domstate --reason: A {a:28s} B {b}")


async def operator(mig):
    say(f"The guest runs on A (memcheck pass {mig.src_console.last()}); "
        f"migrating it, post-copy after the first pass:")
    await mig.start()
    say("$ " + mig.commands[-1])
    await show(mig)
    say("The link breaks: host B answers the migration's packets with "
        "TCP resets")
    mig.pair.reset_link()
    cut = time.monotonic()
    t = await mig.failed()
    say(f"    both hosts say post-copy failed {t - cut:.1f} s later; the "
        f"guest runs on B, waiting for the pages still on A")
    await show(mig)
    say("The link is back.  The operator resumes, with the migration's "
        "own URI:")
    mig.pair.restore_link()
    resume = time.monotonic()
    await mig.resume_start()
    say("$ " + mig.commands[-1])
    say(f"    post-copy again {time.monotonic() - resume:.1f} s after the "
        f"command")
    await show(mig)
    return "resumed by the operator"


async def unattended(mig):
    say(f"The guest runs on A (memcheck pass {mig.src_console.last()}); "
        f"migrating it, post-copy after the first pass:")
    await mig.start(postcopy_mibs=16)
    say("$ " + mig.commands[-1])
    say("    (the domain XML gives QEMU -global "
        "migration.postcopy-auto-recover=600000)")
    await show(mig)
    say("The link breaks for five seconds; nobody types anything")
    mig.pair.reset_link()
    await mig.failed()
    await show(mig)
    await asyncio.sleep(5)       # the outage the demo shows
    mig.pair.restore_link()
    back = time.monotonic()
    say("The link is back")
    await mig.a.wait_state(lv.DOMAIN, "paused (post-copy)")
    say(f"    post-copy again {time.monotonic() - back:.1f} s later, "
        f"with no command")
    await show(mig)
    return "recovered by QEMU, finished by libvirt"


async def demo(args):
    work = tempfile.mkdtemp(prefix="libvirt-demo-")
    say(f"Two libvirt hosts: A ({lv.NET}.1) and B ({lv.NET}.2); the "
        f"guest boots on A and checks its memory, pass after pass")
    qemu_args = (["-global", "migration.postcopy-auto-recover=600000"]
                 if args.auto else [])
    events = []
    what = await with_migration(work, args.qemu, args.qemu,
                                unattended if args.auto else operator,
                                qemu_args, show_events=events.append)
    how, verdict = what.split("; ", 1)
    say("The migration completed: B runs the domain (migrated), A has "
        "none")
    say(f"The guest's verdict: {verdict}")
    say("libvirt's lifecycle events on the way (virsh event --all):")
    for when, host, event in sorted(lifecycle(events)):
        print(f"    {when} host {host}: {event}")
    print(f"Outcome: RECOVERED ({how})")


def lifecycle(events):
    """(time, host, event) of the lifecycle events recorded"""
    for line in events:
        m = re.match(r"# host (\w+): \S+ (\S+): event 'lifecycle' for "
                     r"domain '[^']+': (.*)", line)
        if m:
            yield m.group(2)[:12], m.group(1), m.group(3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qemu", default=OURS)
    ap.add_argument("--auto", action="store_true",
                    help="automatic recovery: no resume command")
    args = ap.parse_args()
    reason = lv.unavailable_reason()
    if reason:
        print(f"libvirt demo cannot run here: {reason}")
        return 1
    guest.build()
    try:
        asyncio.run(demo(args))
    except (DemoError, lv.LibvirtError) as e:
        print(f"Outcome: FAILED: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
