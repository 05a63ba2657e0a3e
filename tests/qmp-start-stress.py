#!/usr/bin/env python3
"""Start the harness's QEMUs over and over under CPU load: QMP must connect.

Each round starts one QEMU with the harness (harness/postcopy_harness.py,
Vm.start(): the arguments, the wait for the QMP socket, the connection and
the first commands) and stops it, for each kind the tests start: ours and
the reference QEMU 7.2, each with -incoming and without.  Meanwhile as
many busy processes as there are CPUs load the machine, as other work did
when the harness once read an event where the QMP greeting should be.

Prints, per kind, the starts and the failures with their first lines, and
exits non-zero on any failure.  Not part of make check: it takes minutes.
"""

import argparse
import asyncio
import logging
import multiprocessing
import os
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "harness"))
from postcopy_harness import (  # noqa: E402
    Timeline, Vm, free_port, write_bootsect)

OURS = os.path.join(TOP, "build/qemu/build/qemu-system-x86_64")
REF = os.path.join(TOP, "build/ref/build/qemu-system-x86_64")


def burn():
    while True:
        pass


class FirstMessage(logging.Handler):
    """Keeps what the QMP library logs having received, for a failure."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


async def one_start(binary, incoming, work, log):
    extra = ["-incoming", f"tcp:127.0.0.1:{free_port()}"] if incoming else []
    vm = Vm("vm", binary, work, Timeline(), extra)
    bootsect = os.path.join(work, "bootsect")
    log.lines.clear()
    try:
        write_bootsect(bootsect)
        await vm.start(bootsect)
        await vm.cmd("query-status")
        return None
    except Exception as e:     # noqa: B902: every failure is a result here
        got = [line for line in log.lines if "<--" in line or "recv" in line]
        return f"{type(e).__name__}: {e}; received: {got[:2]}"
    finally:
        await vm.stop()


async def run(args):
    log = FirstMessage()
    qmp_log = logging.getLogger("qemu.qmp")
    qmp_log.setLevel(logging.DEBUG)
    qmp_log.addHandler(log)
    qmp_log.propagate = False
    kinds = [("ours", args.ours), ("7.2", args.ref)]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="qmp-start-") as work:
        for name, binary in kinds:
            for incoming in (False, True):
                label = f"{name} {'-incoming' if incoming else '-S'}"
                t0 = time.monotonic()
                errors = []
                for _ in range(args.starts):
                    err = await one_start(binary, incoming, work, log)
                    if err:
                        errors.append(err)
                took = time.monotonic() - t0
                print(f"{label}: {args.starts} starts, {len(errors)} failed "
                      f"({took:.0f} s)")
                for err in errors[:5]:
                    print(f"    {err}")
                failed += len(errors)
    return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours", default=OURS)
    ap.add_argument("--ref", default=REF)
    ap.add_argument("--starts", type=int, default=200,
                    help="starts of each kind (default 200)")
    ap.add_argument("--load", type=int, default=os.cpu_count(),
                    help="busy processes meanwhile (default: one per CPU)")
    args = ap.parse_args()
    burners = [multiprocessing.Process(target=burn, daemon=True)
               for _ in range(args.load)]
    for p in burners:
        p.start()
    try:
        failed = asyncio.run(run(args))
    finally:
        for p in burners:
            p.terminate()
    print(f"{'FAILED' if failed else 'ok'}: {failed} failed starts")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
