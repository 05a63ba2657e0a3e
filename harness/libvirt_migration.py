"""A guest migrated from libvirt host A to host B by virsh, in postcopy.

The steps an operator (or management software) takes with libvirt 9.0,
each waiting for what libvirt and QEMU show: `virsh migrate --postcopy
--postcopy-after-precopy` in the background, the failure seen on both
hosts, `virsh migrate --postcopy --postcopy-resume`, and the checks that
the migration completed with the guest intact (its own memory check,
harness/guest.py, clean on both consoles and going on, on B, from where
it stopped on A).

Used by tests/libvirt-test.py and demo/libvirt-demo.py, on the hosts of
harness/libvirt_hosts.py.
"""

import asyncio
import os
import re
import time

import guest
import libvirt_hosts as lv
from postcopy_harness import DemoError

POSTCOPY_MIBS = 4           # slow enough that the faults land in postcopy
PRECOPY_MIBS = 200          # below the guest's dirty rate: never converges
PORT = lv.MIGRATION_PORT
# What QEMU prints when it pauses: ours, then QEMU 7.2
PAUSED_RE = r"Postcopy migration paused|Migration paused\."
SRC_FAILED = "paused (post-copy failed)"
DST_FAILED = "running (post-copy failed)"


class Migration:
    """The guest on host A, migrated to host B by virsh."""

    def __init__(self, work, pair, src_qemu, dst_qemu, qemu_args=()):
        self.work = work
        self.pair = pair
        self.a, self.b = pair.a, pair.b
        self.src_qemu = src_qemu
        self.dst_qemu = dst_qemu
        self.qemu_args = qemu_args
        self.src_console = guest.Console(self.a.path(lv.CONSOLE), "A")
        self.dst_console = guest.Console(self.b.path(lv.CONSOLE), "B")
        self.dest_xml = None
        self.job = None
        self.pauses = 0
        self.commands = []

    async def boot(self):
        path = os.path.join(self.work, "domain.xml")
        with open(path, "w") as f:
            f.write(lv.domain_xml(self.src_qemu, self.qemu_args))
        await self.a.virsh("create", path)
        await self.src_console.wait_passes(2)
        if self.dst_qemu != self.src_qemu:
            # The destination's QEMU binary: libvirt takes the domain
            # definition for the destination from --xml
            xml = await self.a.virsh("dumpxml", "--migratable", lv.DOMAIN)
            xml = xml.replace(f"<emulator>{self.src_qemu}</emulator>",
                              f"<emulator>{self.dst_qemu}</emulator>")
            self.dest_xml = os.path.join(self.work, "dest.xml")
            with open(self.dest_xml, "w") as f:
                f.write(xml)

    def migrate_args(self, uri, *extra):
        args = ["migrate", "--live", "--postcopy", lv.DOMAIN, self.b.uri,
                "--migrateuri", uri] + list(extra)
        if self.dest_xml:
            args += ["--xml", self.dest_xml]
        self.commands.append("virsh " + " ".join(args[:3] + ["DOMAIN",
                                                             "HOST_B"] +
                                                 args[5:]))
        return args

    async def start(self, uri=f"tcp://{lv.NET}.2:{PORT}", extra=(),
                    postcopy_mibs=POSTCOPY_MIBS):
        """virsh migrate --postcopy --postcopy-after-precopy, in the
        background; returns once both hosts say post-copy."""
        args = self.migrate_args(
            uri, "--postcopy-after-precopy", "--bandwidth",
            str(PRECOPY_MIBS), "--postcopy-bandwidth", str(postcopy_mibs),
            *extra)
        self.job = asyncio.ensure_future(
            self.a.virsh_rc(*args, timeout=600))
        await asyncio.gather(
            self.a.wait_state(lv.DOMAIN, "paused (post-copy)"),
            self.b.wait_state(lv.DOMAIN, "running (post-copy)"))
        await self.guest_settled()

    async def guest_settled(self, requests=20, timeout=60.0):
        """Wait until the guest on B asked A for @requests pages.

        Under TCG a vCPU holds the BQL while it delivers an interrupt; a
        page of that path still on A when the link fails blocks B's main
        loop until the page comes, and libvirt's commands to B with it
        (QEMU 7.2 as ours: the README's known limits).  Right after the
        switchover, every page is still on A; once the guest has run on
        B and faulted in what it touches, that window is closed."""
        deadline = time.monotonic() + timeout
        while True:
            info = await self.a.qmp(lv.DOMAIN, "query-migrate")
            if info.get("ram", {}).get("postcopy-requests", 0) >= requests:
                return
            if time.monotonic() > deadline:
                raise DemoError(f"the guest on B asked for fewer than "
                                f"{requests} pages in {timeout:.0f} s")
            await asyncio.sleep(0.05)

    async def failed(self, timeout=60.0):
        """Both hosts say post-copy failed; the virsh migrate in flight
        reported the failure; both QEMUs paused.  Returns when the second
        host said post-copy failed."""
        t = await asyncio.gather(
            self.a.wait_state(lv.DOMAIN, SRC_FAILED, timeout),
            self.b.wait_state(lv.DOMAIN, DST_FAILED, timeout))
        if self.job:
            rc, out = await self.job
            self.job = None
            if rc == 0 or "post-copy" not in out:
                raise DemoError(f"virsh migrate: exit {rc}, {out!r}: "
                                f"expected a post-copy failure")
        await self.qemus_paused(timeout)
        return max(t)

    async def qemus_paused(self, timeout=60.0):
        """libvirt says post-copy failed as soon as one side reported the
        failure: a resume must wait until the other side's QEMU paused
        too, or libvirt refuses it ("QEMU reports migration is still
        running")."""
        self.pauses += 1
        await asyncio.gather(
            self.a.wait_qemu_log(PAUSED_RE, self.pauses, timeout),
            self.b.wait_qemu_log(PAUSED_RE, self.pauses, timeout))

    async def resume(self, uri=f"tcp://{lv.NET}.2:{PORT}", extra=()):
        """virsh migrate --postcopy --postcopy-resume; returns its exit
        status and output."""
        args = self.migrate_args(uri, "--postcopy-resume", *extra)
        return await self.a.virsh_rc(*args, timeout=600)

    async def resume_start(self, uri=f"tcp://{lv.NET}.2:{PORT}",
                           bandwidth=1000):
        """The resume, in the background (virsh returns when the
        migration completed); returns once A says post-copy again."""
        self.job = asyncio.ensure_future(self.resume(
            uri, ["--postcopy-bandwidth", str(bandwidth)]))
        await self.a.wait_state(lv.DOMAIN, "paused (post-copy)")

    async def resume_ok(self, uri=f"tcp://{lv.NET}.2:{PORT}",
                        bandwidth=1000, extra=()):
        rc, out = await self.resume(uri, ["--postcopy-bandwidth",
                                          str(bandwidth)] + list(extra))
        if rc:
            raise DemoError(f"virsh migrate --postcopy-resume: {out}")

    async def completed(self):
        """The end of every case: B runs the domain (migrated), A has
        none, A's job completed and B's ended, the guest's check clean and counting on
        from A's last pass."""
        if self.job:
            rc, out = await self.job
            self.job = None
            if rc:
                raise DemoError(f"virsh migrate: {out}")
        await self.b.wait_state(lv.DOMAIN, "running (migrated)", 300)
        await self.a.wait_state(lv.DOMAIN, None, 60)
        # A's migration job completed; B's incoming job ended
        await self.a.wait_event(r"event 'job-completed' for domain",
                                timeout=30)
        job = await self.b.virsh("domjobinfo", lv.DOMAIN)
        if not re.search(r"Job type:\s+None", job):
            raise DemoError(f"B still has a job: {job}")
        last_src = self.src_console.last()
        self.src_console.check()
        last_dst = await self.dst_console.wait_passes(2, after=last_src)
        first_dst = self.dst_console.passes()[0][0]
        if first_dst != last_src + 1:
            raise DemoError(f"the guest printed pass {last_src} on A, then "
                            f"pass {first_dst} on B")
        return (f"memcheck passes 1-{last_src} on A, {first_dst}-{last_dst} "
                f"on B, all ok")


async def with_migration(work, src_qemu, dst_qemu, scenario, qemu_args=(),
                         show_events=print):
    """Two hosts, the guest booted on A, @scenario(migration), then the
    end checks; everything torn down, also on failure."""
    pair = lv.Pair(work)
    mig = None
    try:
        await pair.start()
        mig = Migration(work, pair, src_qemu, dst_qemu, qemu_args)
        await mig.boot()
        what = await scenario(mig)
        return f"{what}; {await mig.completed()}"
    finally:
        if mig and mig.job:
            mig.job.cancel()
        for host in (pair.a, pair.b):
            for line in host.events_since():
                show_events(f"# host {host.name}: {line}")
        await pair.stop()


