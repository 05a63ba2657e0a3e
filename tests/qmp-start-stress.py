#!/usr/bin/env python3
"""Start the harness's QEMUs over and over under CPU load: QMP must connect.

Each round starts one QEMU with the harness (harness/postcopy_harness.py,
Vm.start(): the arguments, the wait for the QMP socket, the connection and
the first commands) and stops it, for each kind the tests start: ours and
the reference QEMU 7.2, each with -incoming and without.  Meanwhile as
many busy processes as there are CPUs load the machine, as other work did
when the harness once read an event where the QMP greeting should be.

--widen-ms N makes the race that this once lost certain: a preloaded shim
sleeps N ms in each QEMU's monitor I/O thread between the moment the QMP
chardev marks the client connected and the greeting (the first
g_source_set_name() of the chardev's watch, in tcp_chr_connect()), while
the main thread goes on, e.g. to the MIGRATION event of -incoming.
--plain-client uses QEMU's QMPClient instead of the harness's QMPSession,
to see what happened before the harness kept such events.

Prints, per kind, the starts and the failures with their first lines, and
exits non-zero on any failure.  Not part of make check: it takes minutes.
"""

import argparse
import asyncio
import logging
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "harness"))
import postcopy_harness  # noqa: E402
from postcopy_harness import (  # noqa: E402
    Timeline, Vm, free_port, write_bootsect)

OURS = os.path.join(TOP, "build/qemu/build/qemu-system-x86_64")
REF = os.path.join(TOP, "build/ref/build/qemu-system-x86_64")


WIDEN_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct _GSource GSource;

void g_source_set_name(GSource *source, const char *name)
{
    static void (*real)(GSource *, const char *);
    static int slept;

    if (!real) {
        real = (void (*)(GSource *, const char *))
               dlsym(RTLD_NEXT, "g_source_set_name");
    }
    if (!slept && name && !strcmp(name, "chardev-iowatch-qmp")) {
        slept = 1;
        usleep(atoi(getenv("QMP_WIDEN_MS")) * 1000);
    }
    real(source, name);
}
"""


def build_shim(work):
    src = os.path.join(work, "widen.c")
    lib = os.path.join(work, "widen.so")
    with open(src, "w") as f:
        f.write(WIDEN_SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", lib, src, "-ldl"],
                   check=True)
    return lib


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


async def one_start(binary, incoming, work, log, wrapper):
    extra = ["-incoming", f"tcp:127.0.0.1:{free_port()}"] if incoming else []
    vm = Vm("vm", binary, work, Timeline(), extra, wrapper=wrapper)
    bootsect = os.path.join(work, "bootsect")
    log.lines.clear()
    try:
        write_bootsect(bootsect)
        await vm.start(bootsect)
        await vm.cmd("query-status")
        return None
    except Exception as e:     # noqa: B902: every failure is a result here
        got = [" ".join(line.split()) for line in log.lines
               if "<--" in line or "recv" in line]
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
    if args.plain_client:
        postcopy_harness.QMPSession = postcopy_harness.QMPClient
    with tempfile.TemporaryDirectory(prefix="qmp-start-") as work:
        wrapper = []
        if args.widen_ms:
            wrapper = ["env", f"LD_PRELOAD={build_shim(work)}",
                       f"QMP_WIDEN_MS={args.widen_ms}"]
        for name, binary in kinds:
            for incoming in (False, True):
                label = f"{name} {'-incoming' if incoming else '-S'}"
                t0 = time.monotonic()
                errors = []
                for _ in range(args.starts):
                    err = await one_start(binary, incoming, work, log,
                                          wrapper)
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
    ap.add_argument("--widen-ms", type=int, default=0,
                    help="widen the window before the greeting (see above)")
    ap.add_argument("--plain-client", action="store_true",
                    help="QEMU's QMPClient, not the harness's QMPSession")
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
