#!/usr/bin/env python3
"""Dead-link detection of postcopy: black holes, dropped packets, slow links.

Each case runs a postcopy migration of a guest that writes its memory,
and checks that a link that silently stops carrying data makes the
migration pause (postcopy-link-timeout), on each side that can tell,
within the limit plus a margin; then lets the link work again, resumes,
completes, and checks the guest memory on the destination page by page.

  /link/black-hole/ours      a proxy stops forwarding, both sides ours
  /link/black-hole/ours-to-ref  the same against an unmodified QEMU 7.2
                             destination, which answers the heartbeat
  /link/netns-drop/ours      the two QEMUs in network namespaces joined
                             by veth; nftables drops every packet
  /link/netns-drop/ref-to-ours  the same from a QEMU 7.2 source, which
                             sends no heartbeat: the destination's socket
                             timeouts detect it
  /link/healthy/slow         max-postcopy-bandwidth of 4 KiB/s and a
                             1 s limit: the migration never pauses
  /link/healthy/slow-network  postcopy at full speed into a network
                             limited to 256 kbit/s by tc (namespaces): the
                             heartbeat must not queue behind the pages
  /link/completion/end-lost  the source sends its last pages and the end
                             of the stream, which the link loses: both
                             sides pause instead of failing, and the
                             recovery sends again what was lost
  /link/completion/end-lost/preempt  the same with postcopy-preempt
  /link/completion/shut-lost  the destination completes, its SHUT is lost:
                             the source pauses rather than wait forever,
                             and can be cancelled
  /link/quit/dead-link       the destination gets SIGTERM in postcopy,
                             then the link goes silent: it exits once the
                             watchdog pauses it, instead of hanging
  /link/auto-recover/netns-drop  postcopy-auto-recover: nftables drops
                             every packet until the source made two
                             attempts (each a SYN lost), then lets them
                             through: both sides recover with no command
  /link/auto-recover/bandwidth  max-postcopy-bandwidth raised while the
                             migration is paused applies to the migration
                             that automatic recovery resumes (a stopped
                             guest, so that only the limited stream flows)
  /link/frozen/oob-pause     the destination (link timeout 0) blocks
                             writing a recovery's received bitmap to a
                             link that carries none of its data, holding
                             the return path's lock: an out-of-band
                             migrate-pause on it still answers within 1 s,
                             it pauses and waits for the next recovery

The namespace cases need root, ip(8) and nft(8); where they are missing
they are reported as skipped, with the reason.  Prints TAP; each result
line gives the measured detection times.
"""

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "harness"))
from postcopy_harness import (  # noqa: E402
    MEM_END, MEM_START, check_guest_memory, complete_and_check, DemoError,
    enter_postcopy, ExecuteError, free_port, proxied_pair, resume_and_complete,
    run_tap, states, test_options, Vm, wait_serial, write_bootsect)

OURS = os.path.join(TOP, "build/qemu/build/qemu-system-x86_64")
REF = os.path.join(TOP, "build/ref/build/qemu-system-x86_64")

LIMIT_MS = 2000          # postcopy-link-timeout of the detection cases
MARGIN = 1.0             # the target: detection within the limit + 1 s
DETECT_WAIT = 30.0       # a detection slower than this is a failure

NS_SRC, NS_DST = "pclink-src", "pclink-dst"
ADDR_SRC, ADDR_DST = "10.231.0.1", "10.231.0.2"


class Skip(Exception):
    pass


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


class Namespaces:
    """Two network namespaces joined by a veth pair; packets can be dropped."""

    def __init__(self):
        if os.geteuid() != 0:
            raise Skip("needs root for network namespaces")
        for tool in ("ip", "nft", "tc"):
            if not shutil.which(tool):
                raise Skip(f"{tool} is not installed")
        self.up = False

    def __enter__(self):
        self.cleanup()
        try:
            sh("ip", "netns", "add", NS_SRC)
            sh("ip", "netns", "add", NS_DST)
        except subprocess.CalledProcessError as e:
            self.cleanup()
            raise Skip("network namespaces unavailable: " +
                       e.stderr.decode().strip()) from None
        self.up = True
        sh("ip", "link", "add", "pclink0", "netns", NS_SRC, "type", "veth",
           "peer", "name", "pclink1", "netns", NS_DST)
        for ns, dev, addr in ((NS_SRC, "pclink0", ADDR_SRC),
                              (NS_DST, "pclink1", ADDR_DST)):
            sh("ip", "-n", ns, "addr", "add", addr + "/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    @staticmethod
    def wrap(ns):
        return ["ip", "netns", "exec", ns]

    def drop(self):
        """Drop every packet between the two, in both namespaces."""
        for ns, peer in ((NS_SRC, ADDR_DST), (NS_DST, ADDR_SRC)):
            rules = (f"table inet pclink {{\n chain in {{\n"
                     f"  type filter hook input priority 0;\n"
                     f"  ip saddr {peer} drop\n }}\n}}\n")
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"],
                           input=rules.encode(), check=True)

    def drop_data_to_source(self, port):
        """Drop the segments with data that the destination sends from
        @port: the connection is made, the destination's writes are not."""
        rules = (f"table inet pclink {{\n chain in {{\n"
                 f"  type filter hook input priority 0;\n"
                 f"  ip saddr {ADDR_DST} tcp sport {port} "
                 f"ip length > 100 drop\n }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", NS_SRC, "nft", "-f", "-"],
                       input=rules.encode(), check=True)

    def restore(self, namespaces=(NS_SRC, NS_DST)):
        for ns in namespaces:
            sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet",
               "pclink")

    def shape(self, rate):
        """Limit the link to @rate (tc syntax) in both directions."""
        for ns, dev in ((NS_SRC, "pclink0"), (NS_DST, "pclink1")):
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev,
               "root", "tbf", "rate", rate, "burst", "32kb", "latency",
               "400ms")

    def unshape(self):
        for ns, dev in ((NS_SRC, "pclink0"), (NS_DST, "pclink1")):
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev,
               "root")

    def cleanup(self):
        for ns in (NS_SRC, NS_DST):
            subprocess.run(["ip", "netns", "del", ns],
                           stderr=subprocess.DEVNULL)

    def __exit__(self, *exc):
        self.cleanup()


@contextlib.asynccontextmanager
async def netns_pair(ns, work, tl, src_bin, dst_bin, mem="150M"):
    """A source in NS_SRC and a destination in NS_DST, the guest running
    on the source: yields (source, destination, the destination's URI),
    and stops them when done."""
    bootsect = os.path.join(work, "bootsect")
    write_bootsect(bootsect)
    uri = f"tcp:{ADDR_DST}:{free_port()}"
    dst = Vm("dest", dst_bin, work, tl, ["-incoming", uri],
             wrapper=ns.wrap(NS_DST), mem=mem)
    src = Vm("source", src_bin, work, tl, [], wrapper=ns.wrap(NS_SRC),
             mem=mem)
    try:
        await dst.start(bootsect)
        await src.start(bootsect)
        await wait_serial(src.serial)
        yield src, dst, uri
    finally:
        for vm in (src, dst):
            await vm.stop()


async def paused_after(vm, t0):
    """Seconds from @t0 (monotonic) until @vm reached postcopy-paused."""
    await states([vm], "postcopy-paused", timeout=DETECT_WAIT)
    for t, st in vm.history:
        if st == "postcopy-paused":
            return t - t0
    raise DemoError(f"{vm.name}: no postcopy-paused in its history")


def log_has(vm, text):
    with open(vm.log_path, errors="replace") as f:
        return text in f.read()


async def start_postcopy(src, dst, uri, limit_ms, limit_on,
                         bandwidth=1 << 20):
    """Migrate until the guest runs on @dst; set the limit on @limit_on."""
    for vm in limit_on:
        await vm.cmd("migrate-set-parameters",
                     **{"postcopy-link-timeout": limit_ms})
    await enter_postcopy(src, dst, uri, postcopy_bw=bandwidth)


async def check_source_reason(src):
    info = await src.cmd("query-migrate")
    desc = info.get("error-desc", "")
    if "Postcopy link dead: nothing received from the destination" not in \
            desc:
        raise DemoError(f"source error-desc is {desc!r}")


def in_time(who, took):
    limit = LIMIT_MS / 1000
    verdict = "within" if took <= limit + MARGIN else "OVER"
    return f"{who} {took:.2f} s ({verdict} limit + {MARGIN:.0f} s)"


async def black_hole(work, tl, src_bin, dst_bin, ours):
    async with proxied_pair(work, tl, src_bin, dst_bin) as (src, dst, proxy):
        uri = f"tcp:127.0.0.1:{proxy.port}"
        ours_dst = dst_bin == ours
        await start_postcopy(src, dst, uri, LIMIT_MS,
                             (src, dst) if ours_dst else (src,))

        t0 = tl.now()
        proxy.stall_links()
        took_src = await paused_after(src, t0)
        await check_source_reason(src)
        if ours_dst:
            took_dst = await paused_after(dst, t0)
            if not log_has(dst, "Postcopy link dead: nothing received "
                                "from the source"):
                raise DemoError("the destination did not say why it paused")
            figures = [in_time("source", took_src),
                       in_time("destination", took_dst)]
        else:
            # A 7.2 destination cannot tell a black hole: still active
            if dst.state != "postcopy-active":
                raise DemoError(f"7.2 destination is '{dst.state}'")
            proxy.break_links()
            await states([dst], "postcopy-paused")
            figures = [in_time("source", took_src),
                       "7.2 destination: no detection (reset by the test)"]
        proxy.break_links()

        pages = await resume_and_complete(
            src, dst, uri,
            os.path.join(work, "dest-memory"))
        return "; ".join(figures) + f"; {pages} pages verified"


async def netns_drop(work, tl, src_bin, dst_bin, ours):
    with Namespaces() as ns:
        async with netns_pair(ns, work, tl, src_bin, dst_bin) as pair:
            src, dst, uri = pair
            ours_src = src_bin == ours
            # A 7.2 source has no postcopy-link-timeout
            await start_postcopy(src, dst, uri, LIMIT_MS,
                                 (src, dst) if ours_src else (dst,))

            t0 = tl.now()
            ns.drop()
            took_dst = await paused_after(dst, t0)
            if ours_src:
                took_src = await paused_after(src, t0)
                await check_source_reason(src)
                figures = [in_time("source", took_src),
                           in_time("destination", took_dst)]
            else:
                figures = [in_time("destination (socket timeouts)",
                                   took_dst)]
            ns.restore()
            if not ours_src:
                # The 7.2 source learns of it from the reset its next
                # segment gets from the destination, whose socket is gone
                await states([src], "postcopy-paused")
                took_src = [t for t, st in src.history
                            if st == "postcopy-paused"][0] - t0
                figures.append(f"7.2 source paused {took_src:.2f} s after "
                               f"the drop, once the link was back")

            pages = await resume_and_complete(
                src, dst, uri,
                os.path.join(work, "dest-memory"))
            return "; ".join(figures) + f"; {pages} pages verified"


SYS_SENDMSG = 46            # x86_64: what QIOChannelSocket writes with


def thread_syscall(vm, name):
    """The system call @vm's thread @name is in, or None."""
    for task in glob.glob(f"/proc/{vm.proc.pid}/task/*"):
        try:
            with open(f"{task}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"{task}/syscall") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return None


def listening_in(ns, port):
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tlnH",
                          f"sport = :{port}"],
                         check=True, capture_output=True, text=True)
    return bool(out.stdout.strip())


async def frozen_oob_pause(work, tl, src_bin, dst_bin):
    """An out-of-band migrate-pause must not wait for a blocked writer.

    A QEMU 7.2 source asks for the received bitmap of a 4 GiB guest (128
    KiB as plain bits) on a link that lets through everything but the
    destination's data; the destination's send buffer is 4 KiB, so its
    listen thread blocks in the write, holding rp_mutex.  (Only a 7.2
    source asks for plain bits, and ours for so few runs that they fit.)
    QEMU 7.2's source then waits for the bitmap for good: a failed resume
    handshake never wakes its migration thread.  So this ends with the
    destination paused and ready, not with a recovery."""
    with Namespaces() as ns:
        # /proc/sys/net is the writer's network namespace's
        sh("ip", "netns", "exec", NS_DST, "sh", "-c",
           "echo 4096 4096 4096 > /proc/sys/net/ipv4/tcp_wmem")
        async with netns_pair(ns, work, tl, src_bin, dst_bin,
                              mem="4G") as pair:
            src, dst, uri = pair
            port = int(uri.rsplit(":", 1)[1])
            # No watchdog: nothing but the command may break the link
            await start_postcopy(src, dst, uri, 0, (dst,))
            await dst.cmd("migrate-pause")
            await states([src, dst], "postcopy-paused")

            ns.drop_data_to_source(port)
            await src.cmd("migrate", uri=uri, resume=True)
            await states([dst], "postcopy-recover")
            deadline = time.monotonic() + DETECT_WAIT
            while thread_syscall(dst, "postcopy/listen") != SYS_SENDMSG:
                if time.monotonic() > deadline:
                    raise DemoError("the destination's listen thread did "
                                    "not block writing the bitmap")
                await asyncio.sleep(0.05)

            t0 = time.monotonic()
            try:
                await asyncio.wait_for(dst.cmd("migrate-pause", oob=True),
                                       1.0)
            except asyncio.TimeoutError:
                raise DemoError("the out-of-band migrate-pause did not "
                                "answer within 1 s") from None
            took = time.monotonic() - t0
            await states([dst], "postcopy-paused")
            ns.restore((NS_SRC,))
            # Its monitor is not stuck either, and it waits for a source
            info = await dst.cmd("query-migrate")
            if info["status"] != "postcopy-paused":
                raise DemoError(f"destination is '{info['status']}'")
            if not listening_in(NS_DST, port):
                raise DemoError("the destination no longer listens")
            return (f"migrate-pause answered in {took * 1000:.0f} ms with "
                    f"the bitmap writer blocked; destination paused and "
                    f"listening")


async def auto_recover_attempts(src):
    info = await src.cmd("query-migrate")
    return info.get("postcopy-auto-recover", {}).get("attempts", 0)


async def auto_recover_drop(work, tl, src_bin, dst_bin):
    """A black hole, then the link is back: recovered with no command."""
    with Namespaces() as ns:
        async with netns_pair(ns, work, tl, src_bin, dst_bin) as pair:
            src, dst, uri = pair
            await start_postcopy(src, dst, uri, LIMIT_MS, (src, dst))
            await src.cmd("migrate-set-parameters",
                          **{"postcopy-auto-recover": 120000})
            t0 = tl.now()
            ns.drop()
            took_src = await paused_after(src, t0)
            took_dst = await paused_after(dst, t0)
            # Attempts go on while the link drops everything
            deadline = time.monotonic() + DETECT_WAIT
            while await auto_recover_attempts(src) < 2:
                if time.monotonic() > deadline:
                    raise DemoError("the source made no second attempt")
                await asyncio.sleep(0.05)
            mark = (len(src.history), len(dst.history))
            t_back = tl.now()
            ns.restore()
            for vm, start in zip((src, dst), mark):
                await vm.wait_sequence(start, ["postcopy-recover",
                                               "postcopy-active"])
            back = max(vm.history[-1][0] for vm in (src, dst)) - t_back
            attempts = await auto_recover_attempts(src)
            pages = await complete_and_check(
                src, dst, os.path.join(work, "dest-memory"))
            return (f"{in_time('source', took_src)}; "
                    f"{in_time('destination', took_dst)}; both active "
                    f"{back:.2f} s after the link came back, attempt "
                    f"{attempts}, no command; {pages} pages verified")


async def postcopy_rate(src, seconds=2.0):
    """Bytes per second the source sends, measured over @seconds."""
    before = (await src.cmd("query-migrate"))["ram"]["transferred"]
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    after = (await src.cmd("query-migrate"))["ram"]["transferred"]
    return (after - before) / (time.monotonic() - t0)


async def auto_recover_bandwidth(work, tl, src_bin, dst_bin):
    """A parameter set while paused applies to the resumed migration."""
    slow, fast = 4096, 4 << 20
    # The destination does not start the guest (-S), which is stopped on
    # the source too: no page requests, only the stream at the limit
    async with proxied_pair(work, tl, src_bin, dst_bin,
                            dst_extra=["-S"]) as (src, dst, proxy):
        uri = f"tcp:127.0.0.1:{proxy.port}"
        await src.cmd("stop")
        for vm in (src, dst):
            await vm.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "postcopy-ram", "state": True}])
        await src.cmd("migrate-set-parameters",
                      **{"max-bandwidth": 30000000,
                         "max-postcopy-bandwidth": slow,
                         "postcopy-auto-recover": 120000})
        await src.cmd("migrate", uri=uri)
        await src.wait_state(["active"])
        await src.cmd("migrate-start-postcopy")
        await states((src, dst), "postcopy-active")
        before = await postcopy_rate(src)

        await proxy.set_down(True)
        await states((src, dst), "postcopy-paused")
        mark = (len(src.history), len(dst.history))
        await src.cmd("migrate-set-parameters",
                      **{"max-postcopy-bandwidth": fast})
        await proxy.set_down(False)
        for vm, start in zip((src, dst), mark):
            await vm.wait_sequence(start, ["postcopy-active"])
        after = await postcopy_rate(src)
        # At the old limit the stream stays far below the new one (the
        # limiter lets a page through every 100 ms: 40 KiB/s); at the new
        # one it comes close to it
        if before > fast / 16 or after < fast / 4:
            raise DemoError(f"{before:.0f} B/s before, {after:.0f} B/s "
                            f"after a limit of {slow} then {fast} B/s")
        pages = await complete_and_check(src, dst,
                                         os.path.join(work, "dest-memory"))
        return (f"{before / 1024:.1f} KiB/s at {slow // 1024} KiB/s, then "
                f"{after / 1048576:.2f} MiB/s after the limit was raised to "
                f"{fast >> 20} MiB/s while paused; {pages} pages verified")


async def healthy(work, tl, src_bin, dst_bin):
    bootsect = os.path.join(work, "bootsect")
    write_bootsect(bootsect)
    dport = free_port()
    dst = Vm("dest", dst_bin, work, tl,
             ["-incoming", f"tcp:127.0.0.1:{dport}"])
    src = Vm("source", src_bin, work, tl, [])
    watch = 6.0
    try:
        await dst.start(bootsect)
        await src.start(bootsect)
        await wait_serial(src.serial)
        try:
            await src.cmd("migrate-set-parameters",
                          **{"postcopy-link-timeout": 500})
            raise DemoError("a 500 ms limit was accepted")
        except ExecuteError as e:
            want = ("Parameter 'postcopy_link_timeout' expects 0 (disabled) "
                    "or an integer in the range of 1000 to 3600000 ms")
            if str(e) != want:
                raise DemoError(f"wrong error for 500 ms: {e}") from None
        await start_postcopy(src, dst, f"tcp:127.0.0.1:{dport}", 1000,
                             (src, dst), bandwidth=4096)
        # Six times the limit, at 4 KiB/s: not a single pause may happen
        deadline = time.monotonic() + watch
        while time.monotonic() < deadline:
            for vm in (src, dst):
                if vm.state != "postcopy-active":
                    raise DemoError(f"{vm.name} went '{vm.state}' on a "
                                    f"healthy link")
            await asyncio.sleep(0.2)
        info = await src.cmd("query-migrate")
        sent = info["ram"]["transferred"]
        pages = await complete_and_check(
            src, dst, os.path.join(work, "dest-memory"))
        for vm in (src, dst):
            if any(st == "postcopy-paused" for _, st in vm.history):
                raise DemoError(f"{vm.name} paused on a healthy link")
        return (f"no pause in {watch:.0f} s at 4 KiB/s with a 1 s limit "
                f"({sent} bytes sent); {pages} pages verified")
    finally:
        for vm in (src, dst):
            await vm.stop()


async def slow_network(work, tl, src_bin, dst_bin):
    """A healthy but slow network, postcopy at full speed over it."""
    # The default limit: a link this slow may stall for seconds at times
    rate, limit_ms, watch = "256kbit", 10000, 15.0
    with Namespaces() as ns:
        async with netns_pair(ns, work, tl, src_bin, dst_bin) as pair:
            src, dst, uri = pair
            await start_postcopy(src, dst, uri, limit_ms, (src, dst))
            # Unlimited postcopy into a 256 kbit/s link: the socket buffers
            # fill up, and the heartbeat must not wait behind them.  The
            # link is slow before postcopy goes at full speed: else the
            # migration may complete first
            ns.shape(rate)
            await src.cmd("migrate-set-parameters",
                          **{"max-postcopy-bandwidth": 0})
            sent0 = (await src.cmd("query-migrate"))["ram"]["transferred"]
            deadline = time.monotonic() + watch
            while time.monotonic() < deadline:
                for vm in (src, dst):
                    if vm.state != "postcopy-active":
                        raise DemoError(f"{vm.name} went '{vm.state}' on a "
                                        f"slow healthy link")
                await asyncio.sleep(0.2)
            sent = (await src.cmd("query-migrate"))["ram"]["transferred"]
            ns.unshape()
            pages = await complete_and_check(
                src, dst, os.path.join(work, "dest-memory"))
            for vm in (src, dst):
                if any(st == "postcopy-paused" for _, st in vm.history):
                    raise DemoError(f"{vm.name} paused on a healthy link")
            return (f"no pause in {watch:.0f} s at {rate}/s with a "
                    f"{limit_ms / 1000:.0f} s limit ({sent - sent0} bytes "
                    f"sent meanwhile); {pages} pages verified")


async def completion(work, tl, src_bin, dst_bin, lost, caps=()):
    """A link failure after the source sent the end of the stream.

    The proxy throws away what flows one way (@lost: "to-target" loses the
    source's last pages and the end of the stream, "to-client" the
    destination's SHUT), then postcopy runs at full speed, so that the
    source sends everything and waits for the destination's SHUT.
    """
    # Long enough for the source to send everything first
    limit_ms = 5000
    async with proxied_pair(work, tl, src_bin, dst_bin) as (src, dst, proxy):
        uri = f"tcp:127.0.0.1:{proxy.port}"
        for vm in (src, dst):
            await vm.cmd("migrate-set-parameters",
                         **{"postcopy-link-timeout": limit_ms})
        await enter_postcopy(src, dst, uri, caps=caps)

        t0 = tl.now()
        proxy.drop_links(lost)
        await src.cmd("migrate-set-parameters",
                      **{"max-postcopy-bandwidth": 0})
        took_src = await paused_after(src, t0)
        # Nothing left to send: the source was completing when it paused
        remaining = (await src.cmd("query-migrate"))["ram"]["remaining"]
        if remaining:
            raise DemoError(f"the source paused with {remaining} bytes "
                            f"still to send, before it completed")
        desc = (await src.cmd("query-migrate")).get("error-desc", "")
        if not desc.startswith(("Postcopy link dead: nothing received",
                                "Postcopy migration: a channel failed before "
                                "the destination confirmed that it "
                                "completed")):
            raise DemoError(f"source error-desc is {desc!r}")
        figure = f"source paused {took_src:.2f} s after the loss"

        if lost == "to-client":
            # The destination has everything; only the source cannot know
            await states([dst], "completed", bad=("failed",))
            await dst.cmd("stop")
            dump = os.path.join(work, "dest-memory")
            await dst.cmd("pmemsave", val=MEM_START,
                          size=MEM_END - MEM_START, filename=dump)
            pages, bad = check_guest_memory(dump)
            if bad:
                raise DemoError(f"{len(bad)} of {pages} pages wrong")
            await src.cmd("migrate_cancel")
            await states([src], "cancelled", bad=("failed", "completed"))
            return (f"{figure}, destination completed; source cancelled; "
                    f"{pages} pages verified")

        took_dst = await paused_after(dst, t0)
        proxy.break_links()
        pages = await resume_and_complete(
            src, dst, uri,
            os.path.join(work, "dest-memory"))
        return (f"{figure}, destination {took_dst:.2f} s; recovered; "
                f"{pages} pages verified")


def vcpus_wait_for_pages(pid):
    """Whether every vCPU thread of QEMU @pid sleeps outside a system
    call: in a page fault, waiting for a page (the guest never halts)."""
    vcpus = 0
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(task + "/comm") as f:
                if not f.read().startswith("CPU "):
                    continue
            with open(task + "/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(task + "/syscall") as f:
                syscall = f.read().split()[0]
        except OSError:
            return False
        vcpus += 1
        if state != "S" or syscall != "-1":
            return False
    return vcpus > 0


async def quit_dead_link(work, tl, src_bin, dst_bin):
    """The destination is asked to quit (SIGTERM) in postcopy-active, and
    the link goes silent: its clean shutdown waits for vCPUs that wait for
    pages, so once the watchdog pauses the migration, it must exit."""
    async with proxied_pair(work, tl, src_bin, dst_bin) as (src, dst, proxy):
        uri = f"tcp:127.0.0.1:{proxy.port}"
        await start_postcopy(src, dst, uri, LIMIT_MS, (src, dst))
        t0 = tl.now()
        proxy.stall_links()
        # Quit once the vCPU waits for a page that cannot come: a few
        # looks in a row, so that it is no page already on its way
        deadline, seen = time.monotonic() + DETECT_WAIT, 0
        while seen < 5:
            if time.monotonic() > deadline:
                raise DemoError("the destination's vCPU never waited for a "
                                "page")
            seen = seen + 1 if vcpus_wait_for_pages(dst.proc.pid) else 0
            await asyncio.sleep(0.02)
        dst.proc.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.wait_for(dst.proc.wait(), DETECT_WAIT)
        except asyncio.TimeoutError:
            raise DemoError("the destination did not exit") from None
        took = tl.now() - t0
        if rc != 1:
            raise DemoError(f"the destination exited with status {rc}")
        if not log_has(dst, "Quitting while the postcopy migration is "
                            "'postcopy-paused'"):
            raise DemoError("the destination did not say why it exits")
        how = in_time("destination exited with status 1", took)
        took_src = await paused_after(src, t0)
        await src.cmd("migrate_cancel")
        await states([src], "cancelled", bad=("failed", "completed"))
        return f"{how}; source paused after {took_src:.2f} s, cancelled"


def main():
    args = test_options(__doc__, OURS, REF)
    ours, ref = args.ours, args.ref
    cases = [
        ("/link/black-hole/ours", black_hole, ours, ours, ours),
        ("/link/black-hole/ours-to-ref", black_hole, ours, ref, ours),
        ("/link/netns-drop/ours", netns_drop, ours, ours, ours),
        ("/link/netns-drop/ref-to-ours", netns_drop, ref, ours, ours),
        ("/link/healthy/slow", healthy, ours, ours),
        ("/link/healthy/slow-network", slow_network, ours, ours),
        ("/link/completion/end-lost", completion, ours, ours, "to-target"),
        ("/link/completion/end-lost/preempt", completion, ours, ours,
         "to-target", ("postcopy-preempt",)),
        ("/link/completion/shut-lost", completion, ours, ours, "to-client"),
        ("/link/quit/dead-link", quit_dead_link, ours, ours),
        ("/link/auto-recover/netns-drop", auto_recover_drop, ours, ours),
        ("/link/frozen/oob-pause", frozen_oob_pause, ref, ours),
        ("/link/auto-recover/bandwidth", auto_recover_bandwidth, ours,
         ours),
    ]
    return run_tap(cases, args.verbose, args.prefix, need=(ours, ref),
                   skip=Skip)


if __name__ == "__main__":
    sys.exit(main())
