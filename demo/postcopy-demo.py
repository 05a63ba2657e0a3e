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
import re
import shutil
import signal
import socket
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


class Vm:
    """One QEMU process with a QMP monitor."""

    def __init__(self, name, qemu, workdir, timeline, extra):
        self.name = name
        self.qemu = qemu
        self.workdir = workdir
        self.tl = timeline
        self.extra = extra
        self.qmp_path = os.path.join(workdir, name + ".qmp")
        self.serial = os.path.join(workdir, name + ".serial")
        self.log_path = os.path.join(workdir, name + ".log")
        self.proc = None
        self.qmp = QMPClient(name)
        self.state = "none"
        self.history = []            # (time, state)
        self.changed = asyncio.Condition()
        self.exited = None
        self._tasks = []

    async def start(self, bootsect):
        args = [self.qemu, "-name", self.name, "-machine", "pc",
                "-accel", "tcg", "-m", "150M", "-display", "none",
                "-nodefaults", "-serial", "file:" + self.serial,
                "-drive", f"file={bootsect},format=raw,if=ide",
                "-chardev",
                f"socket,id=qmp,path={self.qmp_path},server=on,wait=off",
                "-mon", "chardev=qmp,mode=control"] + self.extra
        self.log = open(self.log_path, "w")
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=self.log,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        self._tasks.append(asyncio.create_task(self._watch_exit()))
        deadline = time.monotonic() + QMP_TIMEOUT
        while not os.path.exists(self.qmp_path):
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

        for vm in (src, dst):
            await vm.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "postcopy-ram", "state": True}])
        # Slow postcopy down so that the failure lands in the middle of it.
        await src.cmd("migrate-set-parameters",
                      **{"max-postcopy-bandwidth": args.postcopy_bw})

        await src.cmd("migrate", uri=f"tcp:127.0.0.1:{bport}")
        tl.log("demo", "migrate: through the bridge")
        await src.wait_state(["active"])
        # One full pass of precopy, then switch to postcopy.
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
        tl.log("demo", "migrate-start-postcopy")
        await src.wait_state(["postcopy-active"])
        await dst.wait_state(["postcopy-active"])
        await asyncio.sleep(args.fail_after)

        tl.log("bridge", "killed (SIGKILL): the link is down")
        bridge.send_signal(signal.SIGKILL)
        await bridge.wait()
        t_fail = tl.mark("failure")

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
        print(f"Paused: source {src.paused_time():.2f}s, "
              f"destination {dst.paused_time():.2f}s; link failure to "
              f"pause detected on the source in "
              f"{pause_delay(src, t_fail):.2f}s")
        print(f"Recovery: 'migrate -r' to postcopy-active took "
              f"{t_active - t_resume:.2f}s")
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
