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
recover and complete.  Then a fake destination answers a source's
recovery with bad return-path messages (received bitmaps of an unknown
RAMBlock, of a wrong size, truncated, without end mark; RESUME_ACK out
of turn; an unknown message): each gets a precise error in query-migrate
and leaves the source paused, and the migration still completes.  A fake
source sends a destination bad recovery commands (a bitmap request for
an unknown RAMBlock; POSTCOPY_RESUME in postcopy-active): each is logged
with a precise error and the destination pauses again.  A source that
got an identity from a destination of ours, in a migration it then
cancelled, recovers a later migration towards a 7.2 destination.  A
recovery attempt fails while its preempt channel still connects: the
channel, which connects after the next attempt succeeded, is closed.
Prints TAP.
"""

import asyncio
import contextlib
import os
import socket
import struct
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "harness"))
from postcopy_harness import (  # noqa: E402
    MEM_END, QMP_TIMEOUT, STATE_TIMEOUT, complete_and_check, DemoError,
    enter_postcopy,
    free_port, proxied_pair, resume_and_complete, run_tap, states,
    test_options, Vm)

OURS = os.path.join(TOP, "build/qemu/build/qemu-system-x86_64")
REF = os.path.join(TOP, "build/ref/build/qemu-system-x86_64")


async def one_case(work, tl, src_bin, dst_bin, preempt, oob=False):
    async with proxied_pair(work, tl, src_bin, dst_bin) as (src, dst, proxy):
        uri = f"tcp:127.0.0.1:{proxy.port}"
        await enter_postcopy(src, dst, uri,
                             caps=("postcopy-preempt",) if preempt else ())

        if oob:
            # Out-of-band, as when the main loop waits on a missing page
            await dst.cmd("migrate-pause", oob=True)
            await states((src, dst), "postcopy-paused")
            uri = f"tcp:127.0.0.1:{free_port()}"
            await dst.cmd("migrate-recover", uri=uri, oob=True)
        else:
            proxy.break_links()
            await states((src, dst), "postcopy-paused")

        pages = await resume_and_complete(
            src, dst, uri,
            os.path.join(work, "dest-memory"))
        return f"{pages} pages verified"


async def with_pairs(work, tl, qemu, tags, body, src_qemu=None, caps=(),
                     src_extra=()):
    """Run @body(work, pairs) on one migration in postcopy-active per tag
    of @tags, each a (source, destination, proxy) through a proxy.  The
    destinations run @qemu, the sources @src_qemu (else @qemu) with the
    options @src_extra; @caps are the migrations' capabilities."""
    async with contextlib.AsyncExitStack() as stack:
        pairs = []
        for tag in tags:
            src, dst, proxy = await stack.enter_async_context(
                proxied_pair(work, tl, src_qemu or qemu, qemu, tag,
                             src_extra))
            await enter_postcopy(src, dst, f"tcp:127.0.0.1:{proxy.port}",
                                 caps)
            pairs.append((src, dst, proxy))
        return await body(work, pairs)


async def other_migration(work, pairs):
    """Resume source A towards destination B, of another migration."""
    (src_a, dst_a, proxy_a), (src_b, dst_b, proxy_b) = pairs
    vms = [src_a, dst_a, src_b, dst_b]
    for _, _, p in pairs:
        p.break_links()
    await states(vms, "postcopy-paused")

    starts = [len(vm.history) for vm in (src_a, dst_b)]
    await src_a.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy_b.port}",
                    resume=True)
    for vm, start in zip((src_a, dst_b), starts):
        await vm.wait_sequence(start, ["postcopy-recover",
                                       "postcopy-paused"])
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
    pages = await complete_and_check(
        src_a, dst_a, os.path.join(work, "dest-a-memory"))
    pages += await complete_and_check(
        src_b, dst_b, os.path.join(work, "dest-b-memory"))
    return f"refused with the expected errors; {pages} pages verified"


class FakeDestination:
    """Accept a source's recovery connection and answer it with @reply.

    Waits until the source asked for the received bitmap of pc.ram, then
    sends @reply on the return path; closes the connection after it if
    @close, otherwise reads on until the source closes it.
    """

    def __init__(self, reply, close=False):
        self.reply = reply
        self.close = close
        self.server = None
        self.port = None

    async def start(self):
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader, writer):
        seen = b""
        try:
            while b"pc.ram" not in seen:
                data = await reader.read(65536)
                if not data:
                    return
                seen = seen[-16:] + data
            writer.write(self.reply)
            await writer.drain()
            if not self.close:
                while await reader.read(65536):
                    pass
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


END_MARK = 0x0123456789abcdef


def rp_message(msg_type, payload):
    return struct.pack(">HH", msg_type, len(payload)) + payload


def rp_recv_bitmap(block, size=None, body=b"", end=None):
    msg = rp_message(5, bytes([len(block)]) + block)     # RECV_BITMAP
    if size is not None:
        msg += struct.pack(">Q", size) + body
    if end is not None:
        msg += struct.pack(">Q", end)
    return msg


def rp_recv_bitmap_rle(block, pages, runs, size=None, end=END_MARK):
    """MIG_RP_MSG_RECV_BITMAP_RLE for @block: @pages, the bytes @runs
    (said to be @size bytes, by default their length), the end mark @end
    (None: none)"""
    msg = rp_message(9, bytes([len(block)]) + block)
    msg += struct.pack(">QQ", pages, len(runs) if size is None else size)
    msg += runs
    if end is not None:
        msg += struct.pack(">Q", end)
    return msg


def leb128(*lengths):
    """The run lengths @lengths, as bitmap-rle.h encodes them"""
    out = bytearray()
    for n in lengths:
        while True:
            out.append((n & 0x7f) | (0x80 if n > 0x7f else 0))
            n >>= 7
            if not n:
                break
    return bytes(out)


async def fake_attempt(src, reply, want, close=False):
    """Resume @src towards a FakeDestination that answers @reply; the
    attempt must fail with an error-desc that starts with @want, which
    is returned whole."""
    fake = FakeDestination(reply, close)
    await fake.start()
    start = len(src.history)
    try:
        await src.cmd("migrate", uri=f"tcp:127.0.0.1:{fake.port}",
                      resume=True)
        await src.wait_sequence(start, ["postcopy-recover",
                                        "postcopy-paused"])
    finally:
        await fake.stop()
    desc = (await src.cmd("query-migrate")).get("error-desc", "")
    if not desc.startswith(want):
        raise DemoError(f"error-desc {desc!r}, expected {want!r}")
    return desc


async def recovery_stats(vms):
    """The postcopy-recovery statistics of each of @vms"""
    return [(await vm.cmd("query-migrate"))["postcopy-recovery"]
            for vm in vms]


async def fake_destination(work, pairs):
    """Bad return-path input during a recovery: a clear error, no loss."""
    (src, dst, proxy), = pairs
    vms = [src, dst]
    proxy.break_links()
    await states(vms, "postcopy-paused")

    def attempt(reply, want, close=False):
        return fake_attempt(src, reply, want, close)

    await attempt(rp_recv_bitmap(b"nosuch"),
                  "Received bitmap of unknown RAMBlock 'nosuch'")
    desc = await attempt(rp_recv_bitmap(b"pc.ram", 8),
                         "Received bitmap of RAMBlock 'pc.ram': 8 "
                         "bytes, expected ")
    size = int(desc.rsplit(" ", 1)[1])
    await attempt(rp_recv_bitmap(b"pc.ram", size, b"\xff" * (size // 2)),
                  "Received bitmap of RAMBlock 'pc.ram' is truncated",
                  close=True)
    await attempt(rp_recv_bitmap(b"pc.ram", size, b"\xff" * size, 0),
                  "Received bitmap of RAMBlock 'pc.ram' has no end mark "
                  "(0x0)")
    await attempt(rp_message(6, struct.pack(">I", 1)),    # RESUME_ACK
                  "RESUME_ACK before the source sent POSTCOPY_RESUME")
    await attempt(rp_message(0x63, b""),
                  "RP: Received invalid message 0x0063 length 0x0000")
    if dst.state != "postcopy-paused":
        raise DemoError(f"destination is '{dst.state}'")

    await src.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}",
                  resume=True)
    await states(vms, "postcopy-active", bad=("failed",))
    pages = await complete_and_check(src, dst,
                                     os.path.join(work, "dest-memory"))
    return f"6 bad replies, each a precise error; {pages} pages verified"


async def fake_destination_rle(work, pairs):
    """Malformed run-length encoded bitmaps: a clear error each, no loss;
    then a real recovery with an encoded bitmap, smaller than the plain."""
    (src, dst, proxy), = pairs
    vms = [src, dst]
    proxy.break_links()
    await states(vms, "postcopy-paused")
    block = b"pc.ram"
    prefix = "Received bitmap of RAMBlock 'pc.ram'"
    bad = f"{prefix} is malformed: "

    desc = await fake_attempt(src, rp_recv_bitmap_rle(block, 5, b"\0"),
                              f"{prefix}: 5 pages, expected ")
    pages = int(desc.rsplit(" ", 1)[1])
    plain = (pages + 63) // 64 * 8
    await fake_attempt(src, rp_recv_bitmap_rle(block, pages, b"\0" * plain),
                       f"{prefix}: {plain} bytes, expected fewer than "
                       f"{plain}")
    for runs, want in (
            (leb128(0, pages + 1), f"run 1 of {pages + 1} bits goes past "
             f"the end of the bitmap, at bit 0 of {pages}"),
            (leb128(10, 0, pages - 10), "run 1 is empty"),
            (leb128(pages - 1), f"the runs end at bit {pages - 1} of "
             f"{pages}"),
            (leb128(10) + b"\x80", "run 1: the encoding ends within its "
             "length"),
            (b"\x8a\x00", "run 0: length not in its shortest form"),
            (b"", "no run")):
        await fake_attempt(src, rp_recv_bitmap_rle(block, pages, runs),
                           bad + want)
    await fake_attempt(src, rp_recv_bitmap_rle(block, pages, b"\0" * 10, 100,
                                               None),
                       f"{prefix} is truncated", close=True)
    await fake_attempt(src, rp_recv_bitmap_rle(block, pages, leb128(pages),
                                               end=0),
                       f"{prefix} has no end mark (0x0)")
    if dst.state != "postcopy-paused":
        raise DemoError(f"destination is '{dst.state}'")

    await src.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}",
                  resume=True)
    await states(vms, "postcopy-active", bad=("failed",))
    stats = await recovery_stats(vms)
    sent = [st["bitmap-bytes"] for st in stats]
    if sent[0] != sent[1] or not 0 < sent[0] < plain:
        raise DemoError(f"bitmap bytes: source {sent[0]}, destination "
                        f"{sent[1]}; pc.ram alone is {plain} as plain bits")
    checked = await complete_and_check(src, dst,
                                       os.path.join(work, "dest-memory"))
    return (f"10 bad encodings, each a precise error; then {sent[0]} bytes "
            f"of bitmaps (pc.ram: {plain} as plain bits); "
            f"{checked} pages verified")


async def fake_destination_unannounced(work, pairs):
    """A source that migrates to 7.2 refuses an encoded bitmap, and gets
    plain bits from the real 7.2 destination."""
    (src, dst, proxy), = pairs
    vms = [src, dst]
    proxy.break_links()
    await states(vms, "postcopy-paused")
    await fake_attempt(src, rp_recv_bitmap_rle(b"pc.ram", 1, leb128(1)),
                       "Received bitmap of RAMBlock 'pc.ram' run-length "
                       "encoded, from a destination that did not say it "
                       "knows the encoding")
    await src.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}",
                  resume=True)
    await states(vms, "postcopy-active", bad=("failed",))
    sent, = [st["bitmap-bytes"] for st in await recovery_stats([src])]
    pages = int((await src.cmd("human-monitor-command",
                               **{"command-line": "info ramblock"}))
                .split("pc.ram", 1)[1].split()[3], 16) // 4096
    plain = 16 + (pages + 63) // 64 * 8
    if sent < plain:
        raise DemoError(f"{sent} bytes of bitmaps from 7.2, fewer than "
                        f"pc.ram's {plain} as plain bits")
    checked = await complete_and_check(src, dst,
                                       os.path.join(work, "dest-memory"))
    return (f"refused; then {sent} bytes of plain bitmaps from 7.2; "
            f"{checked} pages verified")


async def earlier_migration(work, tl, ours, ref):
    """A source of ours that migrated towards a destination of ours
    before, which gave it an identity, migrates to a 7.2 destination: it
    must not prove the old identity there, or the 7.2 QEMU fails the
    recovery on a command it does not know."""
    async with proxied_pair(work, tl, ours, ref, src_extra=(
            "-trace", "postcopy_recovery_id")) as (src, dst_ref, proxy):
        # A first migration, to a destination of ours, cancelled once the
        # identity arrived
        first = free_port()
        dst_ours = Vm("dest-ours", ours, work, tl,
                      ["-incoming", f"tcp:127.0.0.1:{first}"])
        try:
            await dst_ours.start(os.path.join(work, "bootsect"))
            for vm in (src, dst_ours):
                await vm.cmd("migrate-set-capabilities", capabilities=[
                    {"capability": "postcopy-ram", "state": True}])
            await src.cmd("migrate-set-parameters",
                          **{"max-bandwidth": 1000000})
            await src.cmd("migrate", uri=f"tcp:127.0.0.1:{first}")
            deadline = time.monotonic() + STATE_TIMEOUT
            while not log_has(src, "postcopy_recovery_id source: identity 1"):
                if time.monotonic() > deadline:
                    raise DemoError("the first destination gave no identity")
                await asyncio.sleep(0.05)
            await src.cmd("migrate_cancel")
            await states([src], "cancelled", bad=("failed", "completed"))
        finally:
            await dst_ours.stop()

        # The second, to a 7.2 QEMU, with a recovery
        await enter_postcopy(src, dst_ref, f"tcp:127.0.0.1:{proxy.port}")
        proxy.break_links()
        await states([src, dst_ref], "postcopy-paused")
        pages = await resume_and_complete(
            src, dst_ref, f"tcp:127.0.0.1:{proxy.port}",
            os.path.join(work, "dest-memory"))
        return f"recovered towards 7.2; {pages} pages verified"


def syn_sent_to(port):
    """Whether a TCP connection to @port waits for the answer to its SYN"""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == port and fields[3] == "02":
                return True
    return False


async def late_preempt_channel(work, pairs):
    """A recovery attempt fails while its preempt channel still connects;
    that channel, set up after the next attempt succeeded, is closed
    instead of replacing the next attempt's own."""
    (src, dst, proxy), = pairs
    proxy.break_links()
    await states([src, dst], "postcopy-paused")

    # A destination whose accept queue is full after the main channel: the
    # kernel drops the preempt channel's SYN until the test accepts
    fake = socket.socket()
    fake.bind(("127.0.0.1", 0))
    fake.listen(0)
    fake.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        start = len(src.history)
        await src.cmd("migrate", uri=f"tcp:127.0.0.1:{fake.getsockname()[1]}",
                      resume=True)
        await src.wait_sequence(start, ["postcopy-recover"])
        # Only once the preempt channel's SYN went unanswered
        deadline = time.monotonic() + QMP_TIMEOUT
        while not syn_sent_to(fake.getsockname()[1]):
            if time.monotonic() > deadline:
                raise DemoError("the source connected no preempt channel")
            await asyncio.sleep(0.01)
        main, _ = await asyncio.wait_for(loop.sock_accept(fake), QMP_TIMEOUT)
        main.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
        main.close()                                # reset
        await src.wait_sequence(start, ["postcopy-recover",
                                        "postcopy-paused"])

        await src.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}",
                      resume=True)
        await states([src, dst], "postcopy-active", bad=("failed",))
        # The SYN retransmitted a second later gets through now
        late, _ = await asyncio.wait_for(loop.sock_accept(fake),
                                         STATE_TIMEOUT)
        late.setblocking(False)
        try:
            data = await asyncio.wait_for(loop.sock_recv(late, 65536),
                                          QMP_TIMEOUT)
        except asyncio.TimeoutError:
            raise DemoError("the source kept the late preempt channel "
                            "open") from None
        finally:
            late.close()
        if data:
            raise DemoError("the source sent data on the late preempt "
                            "channel")
    finally:
        fake.close()
    # Late for attempt 2, or for attempt 1 once it failed
    if not log_has(src, "postcopy_recovery_source_preempt_stale attempt 1, "):
        raise DemoError("the source did not drop the late preempt channel")
    pages = await complete_and_check(src, dst,
                                     os.path.join(work, "dest-memory"))
    return f"late preempt channel closed; {pages} pages verified"


async def cancel_paused(work, pairs):
    """Cancel a paused migration: its threads are joined (the source logs
    each join), and the source migrates again to a new destination."""
    (src, dst, proxy), = pairs
    proxy.break_links()
    await states([src, dst], "postcopy-paused")
    await src.cmd("migrate_cancel")
    await states([src], "cancelled", bad=("failed", "completed"))
    # The cleanup joins the threads before it says cancelled
    for thread in ("migration", "return path"):
        if not log_has(src, f"migrate_fd_cleanup_joined {thread}\n"):
            raise DemoError(f"the source did not join its {thread} thread")
    # The destination alone may have run the guest since: it goes first
    await dst.stop()
    await src.cmd("cont")
    uri = f"tcp:127.0.0.1:{free_port()}"
    dst2 = Vm("dest2", dst.qemu, work, src.tl, ["-incoming", uri])
    try:
        await dst2.start(os.path.join(work, "bootsect"))
        await enter_postcopy(src, dst2, uri)
        pages = await complete_and_check(src, dst2,
                                         os.path.join(work, "dest2-memory"))
    finally:
        await dst2.stop()
    return f"both threads joined; migrated anew, {pages} pages verified"


def stranger_pages(block, first, count, byte):
    """@count pages of @byte at @first onwards of @block, in the format of
    postcopy's pages on the main and preempt channels (RAM_SAVE_FLAG_PAGE,
    the block named on the first one only)"""
    page, flag_page, flag_continue = 4096, 0x08, 0x20
    out = b""
    for i in range(count):
        if i == 0:
            out += struct.pack(">QB", (first + i * page) | flag_page,
                               len(block)) + block
        else:
            out += struct.pack(">Q", (first + i * page) | flag_page |
                               flag_continue)
        out += bytes([byte]) * page
    return out


async def preempt_stranger(work, pairs):
    """A stranger connects to the paused destination just before the real
    source's preempt channel, and sends guest pages on it: none of them
    may reach the guest."""
    (src, dst, proxy), = pairs
    proxy.break_links()
    await states([src, dst], "postcopy-paused")

    # Near the end of what the guest writes: still on the source
    pages = stranger_pages(b"pc.ram", (MEM_END & ~0xfff) - 24 * 4096, 24,
                           0x41)
    strangers = []

    async def stranger_first(n):
        # The main channel of the resume is number 0, its preempt 1
        if n == 1:
            reader, writer = await asyncio.open_connection("127.0.0.1",
                                                           proxy.target)
            writer.write(pages)
            await writer.drain()
            strangers.append(writer)

    start = len(dst.history)
    proxy.accepted = 0
    proxy.before_connect = stranger_first
    await src.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}", resume=True)
    await dst.wait_sequence(start, ["postcopy-recover", "postcopy-paused"])
    proxy.before_connect = None
    for writer in strangers:
        writer.transport.abort()
    if not strangers:
        raise DemoError("the stranger did not get to connect")
    if not log_has(dst, "refused a preempt channel"):
        raise DemoError("the destination did not say it refused the "
                        "stranger's channel")
    await states([src], "postcopy-paused")

    dump = os.path.join(work, "dest-memory")
    checked = await resume_and_complete(src, dst,
                                        f"tcp:127.0.0.1:{proxy.port}", dump)
    with open(dump, "rb") as f:
        data = f.read()
    stranger = bytes([0x41]) * 4096
    placed = sum(data[i:i + 4096] == stranger
                 for i in range(0, len(data), 4096))
    if placed:
        raise DemoError(f"{placed} of the stranger's pages are in the guest")
    return f"the stranger's channel refused; {checked} pages verified"


def command(cmd, payload=b""):
    """A QEMU_VM_COMMAND of the main channel"""
    return struct.pack(">BHH", 8, cmd, len(payload)) + payload


def log_has(vm, text):
    with open(vm.log_path, errors="replace") as f:
        return text in f.read()


async def fake_source(work, pairs):
    """Bad commands on the destination's recovery port: a clear error, no
    loss.  The source is a 7.2 QEMU, which has no identity to prove."""
    (src, dst, proxy), = pairs
    proxy.break_links()
    await states([src, dst], "postcopy-paused")

    async def attempt(stream, seq, want):
        start = len(dst.history)
        reader, writer = await asyncio.open_connection("127.0.0.1",
                                                       proxy.port)
        try:
            writer.write(stream)
            await writer.drain()
            await dst.wait_sequence(start, seq)
        finally:
            writer.transport.abort()
        if not log_has(dst, want):
            raise DemoError(f"destination did not log {want!r}")

    recv_bitmap, resume = 10, 9                  # MIG_CMD_*
    await attempt(command(recv_bitmap, b"\x06nosuch"),
                  ["postcopy-recover", "postcopy-paused"],
                  "RECV_BITMAP for unknown RAMBlock 'nosuch'")
    # The first resume is right, the second comes in postcopy-active
    await attempt(command(resume) + command(resume),
                  ["postcopy-recover", "postcopy-active", "postcopy-paused"],
                  "POSTCOPY_RESUME while the destination is "
                  "'postcopy-active'")
    if src.state != "postcopy-paused":
        raise DemoError(f"source is '{src.state}'")

    pages = await resume_and_complete(
        src, dst, f"tcp:127.0.0.1:{proxy.port}",
        os.path.join(work, "dest-memory"))
    return f"2 bad recoveries, each a precise error; {pages} pages verified"


def main():
    args = test_options(__doc__, OURS, REF)
    ours, ref = args.ours, args.ref
    cases = []
    for mode in ("plain", "preempt"):
        preempt = mode == "preempt"
        cases.append((f"/interop/ours-to-ref/{mode}", one_case, ours, ref,
                      preempt))
        cases.append((f"/interop/ref-to-ours/{mode}", one_case, ref, ours,
                      preempt))
    cases += [
        # Not interop: our commands out-of-band, through QEMU's QMP library
        ("/qmp-oob/pause-recover", one_case, ours, ours, False, True),
        # Not interop: a source resumes towards another migration's
        # destination
        ("/identity/other-migration", with_pairs, ours, ("-a", "-b"),
         other_migration),
        # Our source, which had an identity from an earlier migration, to 7.2
        ("/identity/earlier-migration", earlier_migration, ours, ref),
        # Not interop: a recovery attempt's preempt channel connects late
        ("/wire/late-preempt-channel", with_pairs, ours, ("",),
         late_preempt_channel, None, ("postcopy-preempt",),
         ("-trace", "postcopy_recovery_source_preempt_stale")),
        # Not interop: a fake destination answers the source's recovery
        # badly
        ("/wire/fake-destination", with_pairs, ours, ("",),
         fake_destination),
        # Not interop: the same with run-length encoded bitmaps
        ("/wire/fake-destination/rle", with_pairs, ours, ("",),
         fake_destination_rle),
        # Our source, migrating to 7.2, takes no encoded bitmap
        ("/wire/fake-destination/rle-unannounced", with_pairs, ref, ("",),
         fake_destination_unannounced, ours),
        # Not interop: a stranger's preempt channel during a recovery
        ("/identity/preempt-stranger", with_pairs, ours, ("",),
         preempt_stranger, None, ("postcopy-preempt",)),
        # Not interop: a paused migration cancelled, then migrated anew
        ("/lifecycle/cancel-paused", with_pairs, ours, ("",), cancel_paused,
         None, (), ("-trace", "migrate_fd_cleanup_joined")),
        # A fake source tries to recover a 7.2 source's migration to ours
        ("/wire/fake-source", with_pairs, ours, ("",), fake_source, ref),
    ]
    return run_tap(cases, args.verbose, args.prefix, need=(ours, ref))


if __name__ == "__main__":
    sys.exit(main())
