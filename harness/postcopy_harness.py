"""Drive a pair of QEMUs for postcopy experiments (demo and tests).

Starts QEMU processes with a QMP monitor (QEMU's own Python QMP library
from the work tree), follows their MIGRATION events into a timeline, waits
for states with a time limit, and checks the guest memory written by
QEMU's a-b boot block.
"""

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREE = os.path.join(TOP, "build", "qemu")
sys.path.insert(0, os.path.join(TREE, "python"))

from qemu.qmp import QMPClient, ExecuteError  # noqa: E402

# The a-b boot block writes the first byte of every page of this range
# (tests/migration/i386/a-b-bootblock.S).
MEM_START = 1 << 20
MEM_END = 100 << 20
PAGE = 4096

QMP_TIMEOUT = 10.0       # every QMP command
STATE_TIMEOUT = 120.0    # every wait for a migration state


class DemoError(Exception):
    pass


class Timeline:
    """Timestamped, human-readable record of what happened."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.marks = {}

    def now(self):
        return time.monotonic() - self.t0

    def log(self, who, what):
        print(f"  [{self.now():7.2f}s] {who:<6} {what}", flush=True)

    def mark(self, key):
        self.marks[key] = self.now()
        return self.marks[key]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_listening(port):
    """Whether a TCP socket listens on @port (without connecting to it)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                return True
    return False


def write_bootsect(path):
    """Extract the boot sector bytes from QEMU's a-b-bootblock.h."""
    hdr = os.path.join(TREE, "tests/migration/i386/a-b-bootblock.h")
    with open(hdr) as f:
        text = f.read()
    body = text[text.index("{") + 1:text.index("}")]
    data = bytes(int(x, 16) for x in re.findall(r"0x[0-9a-fA-F]+", body))
    if len(data) != 512:
        raise DemoError(f"{hdr}: expected a 512 byte boot sector")
    with open(path, "wb") as f:
        f.write(data)


def check_guest_memory(path):
    """Check the a-b pattern on a dump of MEM_START..MEM_END.

    The guest increments the first byte of each page in order, round and
    round.  With the guest stopped, every page holds the same value as the
    previous one, except at the one place where the incrementer stopped,
    where the previous page is one ahead.  A page lost or corrupted in
    migration breaks this.  Returns (pages checked, list of bad pages).
    """
    with open(path, "rb") as f:
        mem = f.read()
    if len(mem) != MEM_END - MEM_START:
        raise DemoError(f"memory dump has {len(mem)} bytes")
    bad = []
    edge_seen = False
    last = mem[0]
    pages = len(mem) // PAGE
    for i in range(1, pages):
        b = mem[i * PAGE]
        if b != last:
            if (b + 1) % 256 == last and not edge_seen:
                edge_seen = True
            else:
                bad.append((MEM_START + i * PAGE, last, b))
        last = b
    return pages, bad


class QMPSession(QMPClient):
    """QEMU's QMP client, keeping events that come before the session is up.

    QEMU 7.2's monitor (ours has the same) sends events to a client that has
    not had its greeting yet.  monitor_qapi_event_emit() leaves out only
    clients in capabilities negotiation, which a client enters with its
    greeting (monitor_qmp_event(), CHR_EVENT_OPENED, in the monitor's I/O
    thread); but the socket chardev takes writes from the moment it marked
    the client connected (tcp_chr_connect()), a moment before.  An event
    of the main thread in between goes out first: a QEMU started with
    -incoming emits MIGRATION "setup" while its monitor accepts the
    harness's connection, and on a loaded machine that event came first.
    Events between the greeting and the answer to qmp_capabilities are
    kept the same way.  They are delivered once the session is up."""

    def __init__(self, name):
        super().__init__(name)
        self._early = None           # events kept while setting up

    async def _establish_session(self):
        self._early = []
        try:
            await super()._establish_session()
        finally:
            early, self._early = self._early, None
        for msg in early:
            await self._event_dispatch(msg)

    async def _recv(self):
        while True:
            msg = await super()._recv()
            if self._early is None or "event" not in msg:
                return msg
            self.logger.debug("event before the session: %s", msg["event"])
            self._early.append(msg)


class Proxy:
    """Forward 127.0.0.1:port to host:target; break, stall or drop links.

    A broken link is reset (RST to both peers).  A stalled link stops
    forwarding in both directions but stays open: a black hole, as when a
    cable is pulled, that only a timeout can detect.  A link that drops
    one direction reads on and throws away what it reads there, even the
    end of the connection.
    """

    def __init__(self, target, host="127.0.0.1"):
        self.target = target
        self.host = host
        self.links = []          # (writer, target writer, flowing event)
        self.dropping = []       # per link: directions dropped (see drop)
        # Bytes forwarded so far, over every connection, per direction
        self.forwarded = {"to-target": 0, "to-client": 0}
        self.server = None
        self.port = None
        # If set, awaited with each accepted connection's number (from 0)
        # before it is connected to the target
        self.before_connect = None
        self.accepted = 0

    async def start(self):
        """Listen on self.port, or on an ephemeral port the first time."""
        self.server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port or 0, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def set_down(self, down):
        """Take the link down: reset every connection and stop listening,
        so that connecting is refused; or bring it up on the same port."""
        if down:
            self.break_links()
            self.server.close()
            await self.server.wait_closed()
        else:
            await self.start()

    async def _accept(self, reader, writer):
        n = self.accepted
        self.accepted += 1
        if self.before_connect:
            await self.before_connect(n)
        try:
            treader, twriter = await asyncio.open_connection(self.host,
                                                             self.target)
        except OSError:
            writer.transport.abort()
            return
        flowing = asyncio.Event()
        flowing.set()
        dropped = set()
        self.links.append((writer, twriter, flowing))
        self.dropping.append(dropped)
        try:
            await asyncio.gather(
                self._pump(reader, twriter, flowing, dropped, "to-target"),
                self._pump(treader, writer, flowing, dropped, "to-client"))
        except asyncio.CancelledError:
            pass

    async def _pump(self, reader, writer, flowing, dropped, direction):
        try:
            while True:
                await flowing.wait()
                data = await reader.read(65536)
                # What was read while the link stalled, even the end of
                # the connection, waits until the link flows or breaks
                await flowing.wait()
                if not data and direction in dropped:
                    # The close is lost too: the link only goes silent
                    await asyncio.Event().wait()
                if not data:
                    break
                if direction in dropped:
                    continue
                self.forwarded[direction] += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    def break_links(self):
        """Reset every forwarded connection (RST to both peers)."""
        for a, b, flowing in self.links:
            a.transport.abort()
            b.transport.abort()
            flowing.set()           # a stalled pump ends too
        self.links = []
        self.dropping = []

    def stall_links(self):
        """Stop forwarding on every current connection, without closing."""
        for _, _, flowing in self.links:
            flowing.clear()

    def drop_links(self, direction):
        """On every current connection, throw away what flows towards the
        target ("to-target") or towards the client ("to-client")."""
        for dropped in self.dropping:
            dropped.add(direction)

    async def close(self):
        self.break_links()
        if self.server:
            self.server.close()
            await self.server.wait_closed()


class Vm:
    """One QEMU process with a QMP monitor."""

    def __init__(self, name, qemu, workdir, timeline, extra, wrapper=(),
                 mem="150M"):
        self.name = name
        self.mem = mem
        self.qemu = qemu
        self.wrapper = list(wrapper)     # e.g. ip netns exec NAME
        self.workdir = workdir
        self.tl = timeline
        self.extra = extra
        self.qmp_path = os.path.join(workdir, name + ".qmp")
        self.serial = os.path.join(workdir, name + ".serial")
        self.log_path = os.path.join(workdir, name + ".log")
        self.proc = None
        self.qmp = QMPSession(name)
        self.state = "none"
        self.history = []            # (time, state)
        self.changed = asyncio.Condition()
        self.exited = None
        self._tasks = []

    async def start(self, bootsect=None):
        """Start QEMU, booting @bootsect if given (else as @extra says)."""
        # The guest starts only once QMP is set up, so that its RESUME is
        # in the timeline (QMPSession keeps events from before the session;
        # a client connecting later would miss them).
        incoming = "-incoming" in self.extra
        args = self.wrapper + [
            self.qemu, "-name", f"{self.name},debug-threads=on", "-machine", "pc",
            "-accel", "tcg", "-m", self.mem, "-display", "none",
            "-nodefaults", "-serial", "file:" + self.serial] + \
            (["-drive", f"file={bootsect},format=raw,if=ide"]
             if bootsect else []) + [
            "-chardev",
            f"socket,id=qmp,path={self.qmp_path},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control"] + \
            ([] if incoming else ["-S"]) + self.extra
        self.log = open(self.log_path, "w")
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=self.log,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        self._tasks.append(asyncio.create_task(self._watch_exit()))
        deadline = time.monotonic() + QMP_TIMEOUT
        while not self._qmp_listening():
            if self.proc.returncode is not None:
                raise DemoError(f"{self.name}: QEMU exited at start; "
                                f"see {self.log_path}")
            if time.monotonic() > deadline:
                raise DemoError(f"{self.name}: no QMP socket")
            await asyncio.sleep(0.02)
        await asyncio.wait_for(self.qmp.connect(self.qmp_path), QMP_TIMEOUT)
        self._tasks.append(asyncio.create_task(self._watch_events()))
        await self.cmd("migrate-set-capabilities", capabilities=[
            {"capability": "events", "state": True}])
        if not incoming:
            await self.cmd("cont")

    def _qmp_listening(self):
        """Whether QEMU listens on its QMP socket.  That the socket exists
        is not enough: a connection between its bind() and its listen()
        is refused.  QEMU's own /proc/PID/net/unix lists the sockets of
        its network namespace, which may not be ours."""
        try:
            with open(f"/proc/{self.proc.pid}/net/unix") as f:
                lines = f.readlines()[1:]
        except OSError:
            return False
        for line in lines:
            fields = line.split()
            # Num RefCount Protocol Flags Type St Inode Path
            if len(fields) == 8 and fields[7] == self.qmp_path and \
                    int(fields[3], 16) & 0x10000:       # __SO_ACCEPTCON
                return True
        return False

    async def cmd(self, name, oob=False, **args):
        try:
            return await asyncio.wait_for(
                self.qmp.execute(name, args or None, oob=oob), QMP_TIMEOUT)
        except asyncio.TimeoutError:
            raise DemoError(f"{self.name}: QMP '{name}' timed out "
                            f"after {QMP_TIMEOUT}s") from None

    async def hmp(self, line):
        out = await self.cmd("human-monitor-command", **{"command-line": line})
        return out.strip()

    async def _set_state(self, state):
        async with self.changed:
            if state != self.state:
                self.state = state
                self.history.append((self.tl.now(), state))
                self.tl.log(self.name, state)
            self.changed.notify_all()

    async def _watch_events(self):
        with self.qmp.listener("MIGRATION") as listener:
            async for event in listener:
                await self._set_state(event["data"]["status"])

    async def _watch_exit(self):
        rc = await self.proc.wait()
        self.exited = rc
        await self._set_state(f"QEMU exited (status {rc})")

    async def wait_state(self, states, timeout=STATE_TIMEOUT):
        """Wait until the state is one of @states (or QEMU exited)."""
        async def reached():
            async with self.changed:
                await self.changed.wait_for(
                    lambda: self.state in states or self.exited is not None)
        try:
            await asyncio.wait_for(reached(), timeout)
        except asyncio.TimeoutError:
            raise DemoError(f"{self.name}: still '{self.state}' after "
                            f"{timeout}s, waiting for {states}") from None
        return self.state

    async def wait_sequence(self, start, seq, timeout=STATE_TIMEOUT):
        """Wait until the states after history[@start] include @seq, in
        order (so that a quick pass through a state is not missed)."""
        def seen():
            it = iter(st for _, st in self.history[start:])
            return all(s in it for s in seq)

        async def reached():
            async with self.changed:
                await self.changed.wait_for(
                    lambda: seen() or self.exited is not None)
        try:
            await asyncio.wait_for(reached(), timeout)
        except asyncio.TimeoutError:
            raise DemoError(f"{self.name}: no {seq} within {timeout}s; "
                            f"now '{self.state}'") from None
        if not seen():
            raise DemoError(f"{self.name}: {self.state}")

    async def wait_running(self, timeout=STATE_TIMEOUT):
        """Wait until the guest runs here (query-status)."""
        deadline = time.monotonic() + timeout
        while (await self.cmd("query-status"))["status"] != "running":
            if time.monotonic() > deadline:
                raise DemoError(f"{self.name}: the guest does not run")
            await asyncio.sleep(0.05)

    def paused_time(self):
        """Seconds spent in postcopy-paused/postcopy-recover, in total."""
        total, since = 0.0, None
        for t, st in self.history:
            if st == "postcopy-paused" and since is None:
                since = t
            elif st not in ("postcopy-paused", "postcopy-recover") and \
                    since is not None:
                total += t - since
                since = None
        return total

    async def stop(self):
        for t in self._tasks:
            t.cancel()
        try:
            await asyncio.wait_for(self.qmp.disconnect(), 2)
        except Exception:
            pass
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.proc:
            self.log.close()


async def wait_serial(path, timeout=30.0):
    """Wait until the guest printed something (it runs)."""
    deadline = time.monotonic() + timeout
    while not (os.path.exists(path) and os.path.getsize(path) > 0):
        if time.monotonic() > deadline:
            raise DemoError(f"guest printed nothing to {path}")
        await asyncio.sleep(0.05)




async def states(vms, goal, bad=("failed", "completed"),
                 timeout=STATE_TIMEOUT):
    """Wait until every VM of @vms is in @goal; fail on a state of @bad."""
    for vm in vms:
        st = await vm.wait_state([goal] + list(bad), timeout=timeout)
        if st != goal:
            raise DemoError(f"{vm.name} reached '{st}', expected '{goal}'")


async def enter_postcopy(src, dst, uri, caps=(), params=None,
                         postcopy_bw=1 << 20, precopy_bw=30000000):
    """Migrate @src to @dst at @uri until the guest runs on @dst.

    Enables postcopy-ram and @caps on both sides, sets @params on both,
    lets precopy make one full pass at @precopy_bw bytes/s without
    converging, switches to postcopy at @postcopy_bw bytes/s (so that it
    does not end before the test breaks something), and waits until the
    guest runs on @dst: before that, a failure is not postcopy's.
    """
    capabilities = [{"capability": c, "state": True}
                    for c in ("postcopy-ram",) + tuple(caps)]
    for vm in (src, dst):
        await vm.cmd("migrate-set-capabilities", capabilities=capabilities)
        if params:
            await vm.cmd("migrate-set-parameters", **params)
    await src.cmd("migrate-set-parameters",
                  **{"max-bandwidth": precopy_bw, "downtime-limit": 1,
                     "max-postcopy-bandwidth": postcopy_bw})
    await src.cmd("migrate", uri=uri)
    await src.wait_state(["active"])
    deadline = time.monotonic() + STATE_TIMEOUT
    while True:
        info = await src.cmd("query-migrate")
        if info.get("ram", {}).get("dirty-sync-count", 0) >= 2:
            break
        if info.get("status") not in ("active", "setup"):
            raise DemoError(f"precopy ended: {info.get('status')}")
        if time.monotonic() > deadline:
            raise DemoError("precopy made no full pass")
        await asyncio.sleep(0.1)
    await src.cmd("migrate-start-postcopy")
    await states((src, dst), "postcopy-active")
    await dst.wait_running()


async def complete_and_check(src, dst, dump):
    """Let the migration complete at full speed, then check every page of
    the guest memory on @dst (dumped to the file @dump).  Returns the
    number of pages checked."""
    await src.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
    await states((src, dst), "completed", bad=("failed",))
    await dst.cmd("stop")
    await dst.cmd("pmemsave", val=MEM_START, size=MEM_END - MEM_START,
                  filename=dump)
    pages, bad = check_guest_memory(dump)
    if bad:
        raise DemoError(f"{dst.name}: {len(bad)} of {pages} pages wrong, "
                        f"first at 0x{bad[0][0]:x}")
    return pages


async def resume_and_complete(src, dst, uri, dump):
    """Resume the paused migration of @src towards @uri, wait until both
    sides are postcopy-active again, then complete it and check the guest
    memory as complete_and_check() does.  Returns the pages checked."""
    await src.cmd("migrate", uri=uri, resume=True)
    await states((src, dst), "postcopy-active", bad=("failed",))
    return await complete_and_check(src, dst, dump)


@contextlib.asynccontextmanager
async def proxied_pair(work, tl, src_bin, dst_bin, tag="", src_extra=(),
                       dst_extra=(), mem="150M"):
    """A source and a destination QEMU, the guest running on the source,
    and a Proxy to the destination's incoming port: yields (source,
    destination, proxy), and stops them all when done.  @tag tells the
    QEMUs of several pairs apart; @src_extra and @dst_extra are more
    options of each; @mem is the guest's RAM."""
    bootsect = os.path.join(work, "bootsect" + tag)     # one image per pair
    write_bootsect(bootsect)
    dport = free_port()
    dst = Vm("dest" + tag, dst_bin, work, tl,
             ["-incoming", f"tcp:127.0.0.1:{dport}"] + list(dst_extra),
             mem=mem)
    src = Vm("source" + tag, src_bin, work, tl, list(src_extra), mem=mem)
    proxy = Proxy(dport)
    try:
        await dst.start(bootsect)
        await src.start(bootsect)
        await wait_serial(src.serial)
        await proxy.start()
        yield src, dst, proxy
    finally:
        if proxy.server:
            await proxy.close()
        for vm in (src, dst):
            await vm.stop()


def test_options(doc, ours, ref):
    """The command line of the project's Python test suites."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--ours", default=ours, help="the QEMU with the series")
    ap.add_argument("--ref", default=ref, help="the unmodified QEMU 7.2")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("-p", "--prefix", default="",
                    help="run only the cases whose name starts with this")
    return ap.parse_args()


def run_tap(cases, verbose, prefix="", need=(), skip=()):
    """Run the @cases whose name starts with @prefix and print TAP.

    A case is (name, coroutine function, arguments...): the function gets
    a fresh work directory and a Timeline (printed if @verbose) before
    the arguments, and returns the comment of its TAP line.  Every case
    needs the executables @need; an exception of the classes @skip skips
    it.  The work directory of a failed case is kept.  Returns the exit
    status.
    """
    cases = [c for c in cases if c[0].startswith(prefix)]
    print(f"1..{len(cases)}")
    failed = 0
    for i, (name, fn, *params) in enumerate(cases, 1):
        tl = Timeline()
        record = []
        if not verbose:
            # Kept quiet, told if the case fails
            tl.log = lambda who, what: record.append(
                f"[{tl.now():7.2f}s] {who:<6} {what}")
        work = tempfile.mkdtemp(prefix="postcopy-test-")
        ok = True
        try:
            missing = [q for q in need if not os.access(q, os.X_OK)]
            if missing:
                raise DemoError(f"QEMU missing: {', '.join(missing)}")
            what = asyncio.run(fn(work, tl, *params))
            print(f"ok {i} {name} # {what}", flush=True)
        except skip as e:
            print(f"ok {i} {name} # SKIP {e}", flush=True)
        except (DemoError, ExecuteError, OSError,
                subprocess.CalledProcessError) as e:
            print(f"not ok {i} {name} # {e}", flush=True)
            ok = False
            failed += 1
        except Exception as e:      # a bug of the test: fail, go on
            print(f"not ok {i} {name} # {type(e).__name__}: {e}",
                  flush=True)
            ok = False
            failed += 1
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print_failure(work, record)
    return 1 if failed else 0


def print_failure(work, record, tail=12):
    """As TAP comments: what happened in a failed case, and the end of
    each log it left in @work."""
    for line in record:
        print(f"#   {line}")
    for name in sorted(os.listdir(work)):
        if not name.endswith(".log"):
            continue
        with open(os.path.join(work, name), errors="replace") as f:
            lines = f.read().splitlines()[-tail:]
        print(f"# {name}, last {len(lines)} lines:")
        for line in lines:
            print(f"#   {line}")
    print(f"# logs kept in {work}", flush=True)
