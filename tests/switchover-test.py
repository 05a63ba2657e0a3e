#!/usr/bin/env python3
"""The switch to postcopy, failed at every step: exactly one running copy.

A proxy on the main channel finds the postcopy package in the stream that
follows migrate-start-postcopy (the PACKAGED command, its length, then the
POSTCOPY_RUN go-ahead that a source of ours sends once the destination
loaded the package) and cuts the channel after exactly N bytes, for N on
each message boundary around them: by a reset (RST to both peers) and,
separately, by going silent (nothing forwarded, nothing closed).  One more
case loses everything the destination sends from the package on (its PONG
and LOADED).  For each cut, exactly one side runs the guest or can:

- the source resumed it (migration "failed", the guest running there,
  error-desc saying why, its memory checked page by page) and the
  destination does not run it; or
- both sides paused, the source's guest stopped; a recovery completes
  the migration and the memory is checked on the destination.

Between two QEMUs of ours the outcome is fixed by N: the source resumes
the guest for every cut before the go-ahead, and the migration recovers
for every cut after it.  Towards QEMU 7.2 the source resumes the guest
for every cut before the end of the package (the PONG before the package
not back, so its last byte held); a cut after it may leave no copy
running (7.2 failing while it loads the devices), never two.  Two more
cases between QEMUs of ours: the
destination fails to load the device state (a device the source has and
the destination lacks), and the destination is killed while the package
is on its way: the guest resumes on the source.  And one case checks
that migrate-pause is refused on both sides while they wait in the
switchover.  Prints TAP.
"""

import asyncio
import contextlib
import os
import signal
import struct
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "harness"))
from postcopy_harness import (  # noqa: E402
    MEM_END, MEM_START, QMP_TIMEOUT, STATE_TIMEOUT, check_guest_memory,
    complete_and_check, DemoError, ExecuteError, free_port, run_tap,
    states, test_options, Vm, wait_serial, write_bootsect)
from qemu.qmp import ExecInterruptedError, StateError  # noqa: E402

OURS = os.path.join(TOP, "build/qemu/build/qemu-system-x86_64")
REF = os.path.join(TOP, "build/ref/build/qemu-system-x86_64")

# The wire format (migration/savevm.c): QEMU_VM_COMMAND, command, length
QEMU_VM_COMMAND = 0x08
MIG_CMD_PING = 2
MIG_CMD_POSTCOPY_RUN = 5
MIG_CMD_PACKAGED = 7
PACKAGED = struct.pack(">BHH", QEMU_VM_COMMAND, MIG_CMD_PACKAGED, 4)
RUN = struct.pack(">BHH", QEMU_VM_COMMAND, MIG_CMD_POSTCOPY_RUN, 0)
PING_LEN = 5 + 4                  # PING 2 comes right before the package
PACKAGED_LEN = 5 + 4              # the command and the package's length
# The package begins with POSTCOPY_LISTEN and ends with PING 3 and then
# POSTCOPY_RUN (QEMU 7.2) or POSTCOPY_AWAIT_RUN (ours): 9 and 5 bytes
LISTEN_LEN = 5
TAIL_PING_LEN = 9
TAIL_CMD_LEN = 5

LINK_TIMEOUT_MS = 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Long enough for the commands sent in the switchover's wait
PAUSE_LINK_TIMEOUT_MS = 3000
PAUSE_REFUSED = "migrate-pause is not allowed until the destination may " \
                "run the guest: the postcopy switchover is '"
ABORTED = "Postcopy switchover failed before the destination could run " \
          "the guest, which runs on the source again"


async def forever():
    """Wait for ever (until cancelled)"""
    await asyncio.Event().wait()


class CutProxy:
    """Forward one TCP port to another, and cut the first connection (the
    main channel) at a byte position found in the stream.

    Once armed, the client-to-target stream is scanned for the anchor:
    "package" (the PACKAGED command), "package-end" (the byte after the
    package) or "run" (a POSTCOPY_RUN after the package).  Exactly
    anchor + offset bytes from the arming are forwarded, then the link is
    cut: "reset" aborts both connections, "silent" forwards nothing more
    either way, "target-lost" drops what the target sends from then on.
    Bytes are held back while the position is unknown, so that a
    negative offset is honoured.  A cut before the end of the package
    also loses what the target sent once the package was seen (PING 2,
    held back until then, included): the link failed there, before any
    answer to what came later could get through.  (A
    cut further on needs the answers: our source sends the go-ahead only
    once LOADED is back, QEMU 7.2's the last byte of the package once
    the PONG before the package is.)
    """

    HOLD = 64                     # the most negative offset

    def __init__(self, target):
        self.target = target
        self.server = None
        self.port = None
        self.links = []
        self.armed = None         # (anchor, offset, mode)
        self.hold_answers = False
        self.package_seen = False
        self.cut = asyncio.Event()
        self.cut_at = None

    async def start(self):
        self.server = await asyncio.start_server(self._accept, "127.0.0.1",
                                                 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def arm(self, anchor, offset, mode):
        assert -self.HOLD <= offset
        self.armed = (anchor, offset, mode)
        self.hold_answers = anchor == "package" or \
            (anchor == "package-end" and offset < 0)

    async def _accept(self, reader, writer):
        try:
            treader, twriter = await asyncio.open_connection("127.0.0.1",
                                                             self.target)
        except OSError:
            writer.transport.abort()
            return
        link = {"ends": (writer, twriter), "silent": False,
                "target_lost": False, "main": not self.links}
        self.links.append(link)
        try:
            await asyncio.gather(self._forward(reader, twriter, link),
                                 self._backward(treader, writer, link),
                                 return_exceptions=True)
        except asyncio.CancelledError:
            pass                  # the proxy closes

    def _position(self, buf):
        """Where to cut in @buf, the stream since arming, and how much of
        it may go out meanwhile: (None, that) while the position is
        unknown"""
        anchor, offset, _ = self.armed
        hold = len(buf) - self.HOLD
        pkg = buf.find(PACKAGED)
        if pkg < 0:
            return None, hold
        self.package_seen = True
        if anchor == "package":
            return pkg + offset, None
        if len(buf) < pkg + PACKAGED_LEN:
            return None, hold
        length = struct.unpack(">I", buf[pkg + 5:pkg + 9])[0]
        end = pkg + PACKAGED_LEN + length
        if anchor == "package-end":
            return end + offset, None
        run = buf.find(RUN, end)
        if run >= 0:
            return run + offset, None
        # The go-ahead comes after LOADED, which needs the whole package:
        # hold back only what may be the start of the go-ahead
        return None, max(hold, min(end, len(buf)),
                         len(buf) - (len(RUN) - 1))

    @staticmethod
    async def _read(reader, link):
        """What comes next from @reader; once @link is silent, nothing"""
        data = await reader.read(65536)
        if link["silent"]:
            await forever()
        return data

    async def _forward(self, reader, writer, link):
        buf = b""             # the stream since arming
        sent = 0              # how much of it went out
        try:
            while True:
                data = await self._read(reader, link)
                if not data:
                    break
                if not (link["main"] and self.armed) or self.cut.is_set():
                    writer.write(data)
                    await writer.drain()
                    continue
                buf += data
                pos, limit = self._position(buf)
                if pos is not None:
                    limit = min(pos, len(buf))
                if limit > sent:
                    writer.write(buf[sent:limit])
                    await writer.drain()
                    sent = limit
                if pos is not None and sent == pos:
                    await self._cut(link, pos)
                    if link["silent"]:
                        await forever()
                    if not link["target_lost"]:
                        break
                    writer.write(buf[sent:])
                    await writer.drain()
        finally:
            if not link["silent"]:
                writer.transport.abort()

    async def _backward(self, reader, writer, link):
        try:
            while True:
                data = await self._read(reader, link)
                if not data:
                    if link["target_lost"]:
                        await forever()
                    break
                if link["target_lost"]:
                    continue
                if link["main"] and self.hold_answers and \
                        self.package_seen and not self.cut.is_set():
                    continue          # lost with the cut to come
                writer.write(data)
                await writer.drain()
        finally:
            if not link["silent"] and not link["target_lost"]:
                writer.transport.abort()

    async def _cut(self, link, pos):
        _, _, mode = self.armed
        self.cut_at = pos
        self.cut.set()
        if mode == "reset":
            for end in link["ends"]:
                end.transport.abort()
        elif mode == "silent":
            link["silent"] = True
        else:
            link["target_lost"] = True

    async def close(self):
        for link in self.links:
            for end in link["ends"]:
                end.transport.abort()
        if self.server:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def cut_pair(work, tl, src_bin, dst_bin, src_extra=(), dst_extra=()):
    """A source running the guest, a destination, and a CutProxy to it"""
    bootsect = os.path.join(work, "bootsect")
    write_bootsect(bootsect)
    dport = free_port()
    dst = Vm("dest", dst_bin, work, tl,
             ["-incoming", f"tcp:127.0.0.1:{dport}"] + list(dst_extra))
    src = Vm("source", src_bin, work, tl, list(src_extra))
    proxy = CutProxy(dport)
    try:
        await dst.start(bootsect)
        await src.start(bootsect)
        await wait_serial(src.serial)
        await proxy.start()
        yield src, dst, proxy
    finally:
        await proxy.close()
        for vm in (src, dst):
            await vm.stop()


async def start_postcopy(src, dst, proxy, ours_dst,
                         link_timeout=LINK_TIMEOUT_MS):
    """Migrate through @proxy, then switch to postcopy: the package goes
    out after the command, with the proxy armed"""
    caps = [{"capability": "postcopy-ram", "state": True}]
    for vm in (src, dst):
        await vm.cmd("migrate-set-capabilities", capabilities=caps)
    for vm in (src, dst) if ours_dst else (src,):
        await vm.cmd("migrate-set-parameters",
                     **{"postcopy-link-timeout": link_timeout})
    await src.cmd("migrate-set-parameters",
                  **{"max-bandwidth": 30000000, "downtime-limit": 1,
                     "max-postcopy-bandwidth": 1 << 20})
    await src.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}")
    await src.wait_state(["active"])
    await src.cmd("migrate-start-postcopy")


def vcpu_seconds(vm):
    """CPU seconds used so far by the vCPU threads of @vm (TCG)"""
    total = 0.0
    task = f"/proc/{vm.proc.pid}/task"
    for tid in os.listdir(task):
        try:
            with open(f"{task}/{tid}/comm") as f:
                if not f.read().startswith("CPU "):
                    continue
            with open(f"{task}/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


async def running(vm):
    """Whether @vm runs the guest; not if it exited, or is exiting.  A
    destination whose main loop waits for a page that will never come
    (its device load touched guest memory when the link went) does not
    answer QMP: its guest runs if its vCPU thread burns CPU, as this
    guest's loop does."""
    if vm.exited is not None:
        return False
    try:
        status = await asyncio.wait_for(vm.qmp.execute("query-status"), 3)
        return status["running"]
    except (ExecInterruptedError, StateError):
        await asyncio.wait_for(vm.proc.wait(), QMP_TIMEOUT)
        return False
    except asyncio.TimeoutError:
        cpu, t0 = vcpu_seconds(vm), time.monotonic()
        await asyncio.sleep(1.0)          # a measurement, not a wait
        return (vcpu_seconds(vm) - cpu) / (time.monotonic() - t0) > 0.5


async def check_source_kept(src, dst, dump):
    """The guest runs on the source again, and never on the destination.
    Returns the pages checked on the source."""
    info = await src.cmd("query-migrate")
    if ABORTED not in info.get("error-desc", ""):
        raise DemoError(f"source error-desc: {info.get('error-desc')!r}")
    await src.wait_running()
    # The destination never got the go-ahead: it pauses, fails or waits
    # for the rest of a package that never comes; whatever it does, it
    # must not run the guest
    if await running(dst):
        raise DemoError("two copies: the destination runs the guest too")
    await src.cmd("stop")
    await src.cmd("pmemsave", val=MEM_START, size=MEM_END - MEM_START,
                  filename=dump)
    pages, bad = check_guest_memory(dump)
    if bad:
        raise DemoError(f"source: {len(bad)} of {pages} pages wrong, first "
                        f"at 0x{bad[0][0]:x}")
    if await running(dst):
        raise DemoError("two copies: the destination runs the guest too")
    return pages


async def recover(src, dst, dump, ours_dst, mode):
    """The source paused: its guest must be stopped.  If the destination
    paused too, recover on a new port without the proxy, complete, check
    the destination and return the pages checked; if it exited (QEMU 7.2
    only), return None: no copy runs"""
    if await running(src):
        raise DemoError("two copies: the source runs its paused guest")
    if not ours_dst and mode == "silent":
        # QEMU 7.2 does not notice a silent link: the operator pauses it
        await dst.wait_state(["postcopy-active"])
        # Out-of-band: the main loop may wait for a page (TCG)
        await dst.cmd("migrate-pause", oob=True)
    st = await dst.wait_state(["postcopy-paused", "failed"])
    if st != "postcopy-paused":
        if ours_dst:
            raise DemoError(f"no copy left: the destination is '{st}'")
        return None
    uri = f"tcp:127.0.0.1:{free_port()}"
    await dst.cmd("migrate-recover", uri=uri, oob=True)
    await src.cmd("migrate", uri=uri, resume=True)
    await states((src, dst), "postcopy-active", bad=("failed",))
    await dst.wait_running()
    pages = await complete_and_check(src, dst, dump)
    if ours_dst:
        await check_stats(src, dst)
    return pages


async def check_stats(src, dst):
    """After the migration completed: one pause, one recovery, on both
    sides, and the bitmaps that the source received are those that the
    destination sent"""
    stats = []
    for vm in (src, dst):
        st = (await vm.cmd("query-migrate")).get("postcopy-recovery")
        if not st or (st["pauses"], st["recoveries"],
                      st["failed-attempts"]) != (1, 1, 0) or \
                not 0 < st["last-recovery-time"] <= st["paused-time"] or \
                not st.get("last-pause-reason") or not st["bitmap-bytes"]:
            raise DemoError(f"{vm.name}: postcopy-recovery {st}")
        stats.append(st)
    if stats[0]["bitmap-bytes"] != stats[1]["bitmap-bytes"]:
        raise DemoError(f"bitmaps: the source received "
                        f"{stats[0]['bitmap-bytes']} bytes, the destination "
                        f"sent {stats[1]['bitmap-bytes']}")


async def sweep_case(work, tl, dst_bin, anchor, offset, mode, expect):
    """Cut at @anchor + @offset by @mode; @expect is "source" (the guest
    resumes there), "recovery" (both pause) or None (either; towards QEMU
    7.2, no copy at all is possible too)"""
    ours_dst = dst_bin == OURS
    async with cut_pair(work, tl, OURS, dst_bin) as (src, dst, proxy):
        proxy.arm(anchor, offset, mode)
        await start_postcopy(src, dst, proxy, ours_dst)
        await asyncio.wait_for(proxy.cut.wait(), STATE_TIMEOUT)
        outcome = await src.wait_state(["failed", "postcopy-paused"])
        dump = os.path.join(work, "mem")
        if outcome == "failed":
            got = "source"
            pages = await check_source_kept(src, dst, dump)
        else:
            got = "recovery"
            pages = await recover(src, dst, dump, ours_dst, mode)
            if pages is None:
                got, pages = "no copy (QEMU 7.2 destination exited)", 0
        if expect and got != expect:
            raise DemoError(f"cut at byte {proxy.cut_at}: the guest went "
                            f"the way of the {got}, expected {expect}")
        return f"cut at byte {proxy.cut_at}: {got}, {pages} pages verified"


async def load_failure_case(work, tl):
    """The destination lacks a device the source has: loading the package
    fails there, and the guest resumes on the source"""
    async with cut_pair(work, tl, OURS, OURS,
                        src_extra=["-device", "i6300esb"]) as \
            (src, dst, proxy):
        await start_postcopy(src, dst, proxy, True)
        await src.wait_state(["failed", "postcopy-paused"])
        info = await src.cmd("query-migrate")
        want = ABORTED + ": the destination could not load the device state"
        if not info.get("error-desc", "").startswith(want):
            raise DemoError(f"source error-desc: {info.get('error-desc')!r}")
        pages = await check_source_kept(src, dst, os.path.join(work, "mem"))
        if await dst.wait_state(["failed"]) != "failed" and \
                dst.exited is None:
            raise DemoError(f"destination: {dst.state}")
        with open(dst.log_path) as f:
            log = f.read()
        if "Unknown savevm section" not in log:
            raise DemoError("the destination did not say what failed")
        return f"source kept the guest, {pages} pages verified"


async def dest_killed_case(work, tl):
    """The destination is killed while the package is on its way (held at
    the proxy): the guest resumes on the source"""
    async with cut_pair(work, tl, OURS, OURS) as (src, dst, proxy):
        proxy.arm("package", PACKAGED_LEN, "silent")
        await start_postcopy(src, dst, proxy, True)
        await asyncio.wait_for(proxy.cut.wait(), STATE_TIMEOUT)
        os.kill(dst.proc.pid, signal.SIGKILL)
        await dst.wait_state([])          # until it exited
        for link in proxy.links:          # the kernel resets its sockets
            for end in link["ends"]:
                end.transport.abort()
        if await src.wait_state(["failed", "postcopy-paused"]) != "failed":
            raise DemoError(f"source: {src.state}")
        pages = await check_source_kept(src, dst, os.path.join(work, "mem"))
        return f"source kept the guest, {pages} pages verified"


async def pause_refused_case(work, tl):
    """The package arrived whole but LOADED is lost (the link went silent):
    both sides wait in the switchover, where migrate-pause is refused on
    both; the source's link watchdog then aborts the switchover, and the
    guest resumes on the source"""
    async with cut_pair(work, tl, OURS, OURS) as (src, dst, proxy):
        proxy.arm("package-end", 0, "silent")
        await start_postcopy(src, dst, proxy, True,
                             link_timeout=PAUSE_LINK_TIMEOUT_MS)
        await asyncio.wait_for(proxy.cut.wait(), STATE_TIMEOUT)
        for vm in (src, dst):
            try:
                # Out-of-band: how management software sends it
                await vm.cmd("migrate-pause", oob=True)
            except ExecuteError as e:
                if not str(e).startswith(PAUSE_REFUSED):
                    raise DemoError(f"{vm.name}: migrate-pause: {e}") \
                        from None
            else:
                raise DemoError(f"{vm.name}: migrate-pause accepted during "
                                f"the switchover")
            st = (await vm.cmd("query-migrate"))["status"]
            if st != "postcopy-active":
                raise DemoError(f"{vm.name}: '{st}' after the refusal")
        if await src.wait_state(["failed", "postcopy-paused"]) != "failed":
            raise DemoError(f"source: {src.state}")
        pages = await check_source_kept(src, dst, os.path.join(work, "mem"))
        desc = (await src.cmd("query-migrate"))["error-desc"]
        if "Postcopy link dead" not in desc:
            raise DemoError(f"source error-desc: {desc!r}")
        return f"refused on both sides, source kept the guest, {pages} " \
               f"pages verified"


def sweep(dst_bin, tag):
    """The cut points, each with its expected outcome (None: either)"""
    ours = dst_bin == OURS
    points = [
        # Before, inside and after PING 2, which precedes the package
        ("package", -PING_LEN - 16, "source"),
        ("package", -PING_LEN, "source"),
        ("package", -4, "source"),
        # Inside the PACKAGED command, inside the package
        ("package", 0, "source"),
        ("package", 5, "source"),
        ("package", PACKAGED_LEN, "source"),
        ("package", PACKAGED_LEN + LISTEN_LEN, "source"),
        ("package-end", -TAIL_CMD_LEN - TAIL_PING_LEN, "source"),
        ("package-end", -TAIL_CMD_LEN, "source"),
        ("package-end", -1, "source"),
        # The package whole: ours waits for the go-ahead; 7.2 may run the
        # guest, or fail while it loads the devices (not covered)
        ("package-end", 0, "source" if ours else None),
    ]
    if not ours:
        # After the next message (ours sends no page before the go-ahead,
        # which may come right after the package)
        points.append(("package-end", PING_LEN, None))
    if ours:
        # The go-ahead: not sent, cut inside, whole
        points += [("run", 0, "recovery"), ("run", 1, "recovery"),
                   ("run", len(RUN), "recovery")]
    cases = []
    for mode in ("reset", "silent"):
        for anchor, offset, expect in points:
            name = f"/switchover/{tag}/{mode}/{anchor}{offset:+d}"
            cases.append((name, sweep_case, dst_bin, anchor, offset, mode,
                          expect))
    # What the destination sends is lost from the package on: no PONG 2
    # (7.2), no LOADED (ours)
    cases.append((f"/switchover/{tag}/target-lost/package-{PING_LEN}",
                  sweep_case, dst_bin, "package", -PING_LEN, "target-lost",
                  "source"))
    return cases


def main():
    global OURS, REF
    args = test_options(__doc__, OURS, REF)
    OURS, REF = args.ours, args.ref
    cases = sweep(OURS, "ours") + [
        ("/switchover/ours/load-failure", load_failure_case),
        ("/switchover/ours/dest-killed", dest_killed_case),
        ("/switchover/ours/pause-refused", pause_refused_case),
    ] + sweep(REF, "7.2")
    return run_tap(cases, args.verbose, args.prefix, need=(OURS, REF))


if __name__ == "__main__":
    sys.exit(main())
