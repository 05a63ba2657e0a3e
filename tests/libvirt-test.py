#!/usr/bin/env python3
"""Postcopy recovery driven by libvirt 9.0: two hosts, a real Linux guest.

Two libvirtd (Debian's packages), each in its own network and mount
namespace with its own host UUID (harness/libvirt_hosts.py), migrate the
test guest (harness/guest.py: Debian's kernel, memcheck rewriting and
checking 256 MiB pass after pass) with `virsh migrate --postcopy
--postcopy-after-precopy`.  Faults are nftables rules between the hosts
or a socat relay killed; recovery is libvirt's own: `virsh migrate
--postcopy --postcopy-resume`.  Every case ends with the domain running
(migrated) on B and gone from A, B's migration job completed, the guest's
own check clean on both consoles and its pass count going on, on B, from
where it stopped on A.

  /libvirt/reset/original-uri   TCP resets (nft on A); resume to the
                                migration's own URI
  /libvirt/relay-killed/new-port  the socat relay carrying the migration
                                is killed; resume straight to a new port
  /libvirt/drop/detected        every packet dropped (nft on A): both
                                domains say "post-copy failed" within
                                postcopy-link-timeout + 1 s; resume
  /libvirt/two-failures         resets; then the resume's link goes
                                silent in the middle of the received
                                bitmap; the second resume succeeds
  /libvirt/domjobabort          `virsh domjobabort --postcopy`; resume
  /libvirt/auto-recover         postcopy-auto-recover given in the domain
                                XML (<qemu:commandline>); resets, then the
                                link is back; no virsh command at all
  /libvirt/postcopy-bandwidth   --postcopy-bandwidth on resume sets the
                                resumed migration's rate (measured)
  /libvirt/switchover/load-failure  B's QEMU lacks a device of A's: the
                                state fails to load at the switch to
                                postcopy; the guest runs on A again
                                (libvirt says "running"), B's domain
                                is gone; migrated again, to a B with
                                the device
  /libvirt/interop/ours-to-7.2  source ours, destination QEMU 7.2: the
                                relay killed; resume to the original URI
  /libvirt/interop/7.2-to-ours  source QEMU 7.2, destination ours

Needs root; every case says SKIP with the reason where namespaces or
libvirt cannot run.  Prints TAP.
"""

import asyncio
import os
import re
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "harness"))
import guest  # noqa: E402
import libvirt_hosts as lv  # noqa: E402
from libvirt_migration import (  # noqa: E402
    DST_FAILED, SRC_FAILED, with_migration)
from postcopy_harness import DemoError, run_tap, test_options  # noqa: E402

OURS = os.path.join(TOP, "build/qemu/build/qemu-system-x86_64")
REF = os.path.join(TOP, "build/ref/build/qemu-system-x86_64")

LINK_TIMEOUT_S = 10.0       # our default postcopy-link-timeout
PORT = lv.MIGRATION_PORT


async def reset_original_uri(work, tl, ours):
    async def scenario(mig):
        await mig.start()
        mig.pair.reset_link(on="A")
        t0 = time.monotonic()
        t = await mig.failed()
        mig.pair.restore_link()
        await mig.resume_ok()
        return (f"resets: both hosts post-copy failed after "
                f"{t - t0:.1f} s; resumed to the original URI")

    return await with_migration(work, ours, ours, scenario)


async def relay_killed_new_port(work, tl, ours):
    async def scenario(mig):
        pair = mig.pair
        await pair.start_relay(PORT, PORT)
        await mig.start(uri=f"tcp://{pair.relay_addr}:{PORT}",
                        extra=["--listen-address", "127.0.0.1"])
        await pair.kill_relay()
        await mig.failed()
        await mig.resume_ok(uri=f"tcp://{lv.NET}.2:{PORT + 1}")
        return "socat relay killed; resumed straight to a new port"

    return await with_migration(work, ours, ours, scenario)


async def drop_detected(work, tl, ours):
    async def scenario(mig):
        await mig.start()
        mig.pair.drop_link(on="A")
        t0 = time.monotonic()
        t = await mig.failed(timeout=LINK_TIMEOUT_S + 30)
        if t - t0 > LINK_TIMEOUT_S + 1:
            raise DemoError(f"post-copy failed on both hosts only "
                            f"{t - t0:.1f} s after the drop")
        mig.pair.restore_link()
        await mig.resume_ok()
        return (f"packets dropped: both hosts post-copy failed after "
                f"{t - t0:.1f} s (postcopy-link-timeout "
                f"{LINK_TIMEOUT_S:.0f} s); resumed")

    return await with_migration(work, ours, ours, scenario)


async def two_failures(work, tl, ours):
    async def scenario(mig):
        pair = mig.pair
        await mig.start()
        pair.reset_link()
        await mig.failed()
        pair.restore_link()
        # The second failure: the link goes silent once B has sent 256
        # bytes of packets (its SYN-ACK, an ACK or two), before the end of
        # its received bitmaps: run-length encoded, they take a few hundred
        # bytes, and a larger quota let the recovery complete in time
        pair.drop_link(quota=256)
        rc, out = await mig.resume(extra=["--postcopy-bandwidth", "1000"])
        if rc == 0:
            raise DemoError("the resume succeeded on a silent link")
        for host, want in ((mig.a, SRC_FAILED), (mig.b, DST_FAILED)):
            state = await host.state(lv.DOMAIN)
            if state != want:
                raise DemoError(f"host {host.name} is {state!r} after the "
                                f"failed resume")
        # Both QEMUs notice the silence by themselves and pause again
        await mig.qemus_paused(LINK_TIMEOUT_S + 30)
        first = out.splitlines()[-1] if out else ""
        pair.restore_link()
        await mig.resume_ok()
        return (f"resets, then a resume cut in its bitmap ({first}); "
                f"resumed")

    return await with_migration(work, ours, ours, scenario)


async def domjobabort(work, tl, ours):
    async def scenario(mig):
        await mig.start()
        await mig.a.virsh("domjobabort", "--postcopy", lv.DOMAIN)
        await mig.failed()
        await mig.resume_ok()
        return "virsh domjobabort --postcopy, then resumed"

    return await with_migration(work, ours, ours, scenario)


async def auto_recover(work, tl, ours):
    async def scenario(mig):
        pair = mig.pair
        # Fast enough to complete without a command raising the rate
        await mig.start(postcopy_mibs=16)
        since = time.monotonic()
        pair.reset_link()
        await mig.failed()
        status = (await mig.a.qmp(lv.DOMAIN, "query-migrate")).get(
            "postcopy-auto-recover", {})
        if status.get("status") != "retrying":
            raise DemoError(f"A's automatic recovery: {status}")
        pair.restore_link()
        back = time.monotonic()
        await mig.b.wait_state(lv.DOMAIN, "running (migrated)", 300)
        done = time.monotonic()
        seen = {h.name: [re.sub(r"^.*?: event ", "", line)
                         for line in h.events_since(since)]
                for h in (mig.a, mig.b)}
        for name, lines in seen.items():
            if not lines:
                raise DemoError(f"no libvirt event on host {name}")
        return (f"resets; {status['attempts']} automatic attempt(s) while "
                f"cut, then B running (migrated) {done - back:.1f} s after "
                f"the link came back, with no virsh command")

    return await with_migration(
        work, ours, ours, scenario,
        qemu_args=["-global", "migration.postcopy-auto-recover=120000"])


async def transferred_rate(host, seconds=3.0):
    """MiB/s of migration data the source sent over @seconds."""
    async def sample():
        info = await host.qmp(lv.DOMAIN, "query-migrate")
        return time.monotonic(), info["ram"]["transferred"]

    t0, b0 = await sample()
    await asyncio.sleep(seconds)   # the measurement's own interval
    t1, b1 = await sample()
    return (b1 - b0) / (t1 - t0) / (1 << 20)


async def postcopy_bandwidth(work, tl, ours):
    before_mibs, after_mibs = 2, 16

    async def scenario(mig):
        await mig.start(postcopy_mibs=before_mibs)
        before = await transferred_rate(mig.a)
        mig.pair.reset_link()
        await mig.failed()
        mig.pair.restore_link()
        await mig.resume_start(bandwidth=after_mibs)
        after = await transferred_rate(mig.a)
        for want, got in ((before_mibs, before), (after_mibs, after)):
            if not want * 0.5 <= got <= want * 1.25:
                raise DemoError(f"{got:.1f} MiB/s with --postcopy-bandwidth "
                                f"{want}")
        return (f"{before:.1f} MiB/s with --postcopy-bandwidth "
                f"{before_mibs}, {after:.1f} MiB/s after a resume with "
                f"--postcopy-bandwidth {after_mibs}")

    return await with_migration(work, ours, ours, scenario)


async def switchover_load_failure(work, tl, ours):
    async def scenario(mig):
        # B's QEMU lacks a device of A's: loading the state fails there
        xml = await mig.a.virsh("dumpxml", "--migratable", lv.DOMAIN)
        mig.dest_xml = os.path.join(work, "dest-lacking.xml")
        with open(mig.dest_xml, "w") as f:
            f.write(re.sub(r"\s*<qemu:commandline>.*?</qemu:commandline>",
                           "", xml, flags=re.S))
        rc, out = await mig.a.virsh_rc(*mig.migrate_args(
            f"tcp://{lv.NET}.2:{PORT}", "--postcopy-after-precopy",
            "--bandwidth", "200", "--postcopy-bandwidth", "4"), timeout=600)
        if rc == 0:
            raise DemoError(f"virsh migrate succeeded: {out!r}")
        # virsh reports B's error, or that B's domain is gone, whichever
        # libvirt on B noticed first; B's QEMU says why
        await mig.b.wait_qemu_log(r"Unknown savevm section")
        # The guest runs on A again, where its check goes on; B has none
        state = await mig.a.state(lv.DOMAIN)
        if not state.startswith("running"):
            raise DemoError(f"A: {state}")
        await mig.b.wait_state(lv.DOMAIN, None)
        await mig.a.wait_event(r"event 'lifecycle' for domain .*: "
                               r"Resumed Unpaused")
        last = mig.src_console.last()
        await mig.src_console.wait_passes(2, after=last)
        # libvirt can migrate the domain again, this time to a B that has
        # the device
        mig.dest_xml = None
        await mig.start()
        return (f"load failed on B, the guest runs on A again ({state}); "
                f"migrated again")

    return await with_migration(work, ours, ours, scenario,
                                qemu_args=["-device", "i6300esb"])


def interop(src_is_ours):
    async def case(work, tl, ours, ref):
        async def scenario(mig):
            # The relay's end closes both sides' sockets: QEMU 7.2 has no
            # dead-link detection, and a destination that sends nothing
            # would never see a reset
            pair = mig.pair
            relay = [f"tcp://{pair.relay_addr}:{PORT}",
                     ["--listen-address", "127.0.0.1"]]
            await pair.start_relay(PORT, PORT)
            await mig.start(uri=relay[0], extra=relay[1])
            await pair.kill_relay()
            await mig.failed()
            await pair.start_relay(PORT, PORT)
            await mig.resume_ok(uri=relay[0], extra=relay[1])
            return "socat relay killed; resumed to the original URI"

        src, dst = (ours, ref) if src_is_ours else (ref, ours)
        return await with_migration(work, src, dst, scenario)
    return case


def main():
    args = test_options(__doc__, OURS, REF)
    guest.build()
    cases = [
        ("/libvirt/reset/original-uri", reset_original_uri, args.ours),
        ("/libvirt/relay-killed/new-port", relay_killed_new_port,
         args.ours),
        ("/libvirt/drop/detected", drop_detected, args.ours),
        ("/libvirt/two-failures", two_failures, args.ours),
        ("/libvirt/domjobabort", domjobabort, args.ours),
        ("/libvirt/auto-recover", auto_recover, args.ours),
        ("/libvirt/postcopy-bandwidth", postcopy_bandwidth, args.ours),
        ("/libvirt/switchover/load-failure", switchover_load_failure,
         args.ours),
        ("/libvirt/interop/ours-to-7.2", interop(True), args.ours,
         args.ref),
        ("/libvirt/interop/7.2-to-ours", interop(False), args.ours,
         args.ref),
    ]
    return run_tap(cases, args.verbose, args.prefix,
                   need=(args.ours, args.ref),
                   skip=(lv.Unavailable,))


if __name__ == "__main__":
    sys.exit(main())
