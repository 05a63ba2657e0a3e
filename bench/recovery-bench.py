#!/usr/bin/env python3
"""Guest stall after a postcopy link failure: ours vs QEMU 7.2.

For each link outage of D seconds, plus a random fraction of a second so
that the link comes back at any moment of the retries (the proxy goes
down, so that the link breaks and connecting is refused, then comes back
on its port), measures
how long after the link's return both sides are in postcopy-active again:
- ours: with postcopy-auto-recover, nobody types anything;
- QEMU 7.2: an operator who types "migrate resume=true" the instant the
  link is back (the best 7.2 can do; without an operator it never
  recovers).
Also measured for ours: the CPU time the source spent while the link was
down (its retries), and, with network namespaces (root), a black hole
(nftables drops every packet) with postcopy-link-timeout T: how long until
both sides paused, and until both were active again after the link's
return.

Failure detection: from the fault to each side's postcopy-paused, for a
reset link (RST) and for a black hole (the proxy forwards nothing and
closes nothing; ours with postcopy-link-timeout T, QEMU 7.2 never notices).
Recovery: from the resume command to postcopy-active on both sides, plain,
with postcopy-preempt, and over TLS (PSK).

The downtime of the switch to postcopy, from the source's STOP event to
the destination's RESUME event (QMP timestamps, one clock): ours to ours
(the destination runs the guest on the source's go-ahead, after saying
that it loaded the device state), ours to 7.2 (no handshake: the source
waits for the PONG that precedes the package before it hands over the
package's last byte), and 7.2 to 7.2.

Runs ours and 7.2 alternately, REPS times each, and prints min / median /
max per scenario with the ratio ours/7.2, plus a JSON file.  Every
migration is completed and the guest memory checked on the destination.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "harness"))
sys.path.insert(0, os.path.join(TOP, "tests"))
from postcopy_harness import (  # noqa: E402
    DemoError, QMP_TIMEOUT, Timeline, complete_and_check, enter_postcopy,
    proxied_pair, states)

OURS = os.path.join(TOP, "build/qemu/build/qemu-system-x86_64")
REF = os.path.join(TOP, "build/ref/build/qemu-system-x86_64")
OUTAGES = (0.5, 2.0, 10.0)
LINK_TIMEOUT_MS = 2000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def jitter():
    """A link comes back at any moment of the source's retry schedule,
    whose period is at most a second: sample that moment."""
    return random.uniform(0.0, 1.0)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def outage(qemu, ours, down_for):
    """One postcopy migration, one outage: (stall after the link came
    back, source CPU seconds per second while it was down or None)."""
    work = tempfile.mkdtemp(prefix="postcopy-bench-")
    tl = Timeline()
    tl.log = lambda who, what: None
    extra = (["-global", "migration.postcopy-auto-recover=600000"]
             if ours else [])
    async with proxied_pair(work, tl, qemu, qemu, src_extra=extra) as pair:
        src, dst, proxy = pair
        uri = f"tcp:127.0.0.1:{proxy.port}"
        await enter_postcopy(src, dst, uri)
        await proxy.set_down(True)
        await states((src, dst), "postcopy-paused")
        cpu0, t0 = cpu_seconds(src.proc.pid), time.monotonic()
        await asyncio.sleep(down_for + jitter())
        cpu = (cpu_seconds(src.proc.pid) - cpu0) / (time.monotonic() - t0)
        marks = (len(src.history), len(dst.history))
        await proxy.set_down(False)
        back = tl.now()
        if not ours:
            await src.cmd("migrate", uri=uri, resume=True)
        for vm, start in zip((src, dst), marks):
            await vm.wait_sequence(start, ["postcopy-active"])
        stall = max(vm.history[-1][0] for vm in (src, dst)) - back
        await complete_and_check(src, dst, os.path.join(work, "mem"))
    subprocess.run(["rm", "-rf", work])
    return stall, (cpu if ours else None)


async def black_hole(qemu):
    """Ours, in network namespaces: (both paused after, active again after
    the link came back)."""
    import importlib
    link_test = importlib.import_module("link-test")
    work = tempfile.mkdtemp(prefix="postcopy-bench-")
    tl = Timeline()
    tl.log = lambda who, what: None
    with link_test.Namespaces() as ns:
        async with link_test.netns_pair(ns, work, tl, qemu, qemu) as pair:
            src, dst, uri = pair
            await link_test.start_postcopy(src, dst, uri, LINK_TIMEOUT_MS,
                                           (src, dst))
            await src.cmd("migrate-set-parameters",
                          **{"postcopy-auto-recover": 600000})
            t0 = tl.now()
            ns.drop()
            await states((src, dst), "postcopy-paused",
                         timeout=link_test.DETECT_WAIT)
            paused = max(t for vm in (src, dst) for t, st in vm.history
                         if st == "postcopy-paused") - t0
            await asyncio.sleep(2.0 + jitter())
            marks = (len(src.history), len(dst.history))
            back = tl.now()
            ns.restore()
            for vm, start in zip((src, dst), marks):
                await vm.wait_sequence(start, ["postcopy-active"])
            active = max(vm.history[-1][0] for vm in (src, dst)) - back
            await complete_and_check(src, dst, os.path.join(work, "mem"))
    subprocess.run(["rm", "-rf", work])
    return paused, active


def event_time(event):
    ts = event["timestamp"]
    return ts["seconds"] + ts["microseconds"] / 1e6


async def switchover(src_bin, dst_bin):
    """One postcopy migration: the guest's downtime at the switch, from
    the source's STOP to the destination's RESUME, in seconds"""
    work = tempfile.mkdtemp(prefix="postcopy-bench-")
    tl = Timeline()
    tl.log = lambda who, what: None
    async with proxied_pair(work, tl, src_bin, dst_bin) as pair:
        src, dst, proxy = pair
        with src.qmp.listener("STOP") as stops, \
                dst.qmp.listener("RESUME") as resumes:
            await enter_postcopy(src, dst, f"tcp:127.0.0.1:{proxy.port}")
            stop = await asyncio.wait_for(stops.get(), QMP_TIMEOUT)
            resume = await asyncio.wait_for(resumes.get(), QMP_TIMEOUT)
        downtime = event_time(resume) - event_time(stop)
        await complete_and_check(src, dst, os.path.join(work, "mem"))
    subprocess.run(["rm", "-rf", work])
    return downtime


def tls_args(work, endpoint):
    """A PSK TLS credentials object, the same key on both sides"""
    keys = os.path.join(work, "psk")
    os.makedirs(keys, exist_ok=True)
    with open(os.path.join(keys, "keys.psk"), "w") as f:
        f.write("qemu:" + "9d" * 32 + "\n")
    return ["-object",
            f"tls-creds-psk,id=tls0,endpoint={endpoint},dir={keys}"]


async def detection(qemu, ours, fault):
    """One postcopy migration, one fault ("reset" or "black-hole"): the
    seconds from the fault to postcopy-paused on (source, destination)"""
    work = tempfile.mkdtemp(prefix="postcopy-bench-")
    tl = Timeline()
    tl.log = lambda who, what: None
    params = {"postcopy-link-timeout": LINK_TIMEOUT_MS} if ours else None
    async with proxied_pair(work, tl, qemu, qemu) as pair:
        src, dst, proxy = pair
        uri = f"tcp:127.0.0.1:{proxy.port}"
        await enter_postcopy(src, dst, uri, params=params)
        marks = (len(src.history), len(dst.history))
        t0 = tl.now()
        if fault == "reset":
            proxy.break_links()
        else:
            proxy.stall_links()
        paused = []
        for vm, start in zip((src, dst), marks):
            await vm.wait_sequence(start, ["postcopy-paused"])
            paused.append(next(t for t, st in vm.history[start:]
                               if st == "postcopy-paused") - t0)
        proxy.break_links()
        await src.cmd("migrate", uri=uri, resume=True)
        await states((src, dst), "postcopy-active")
        await complete_and_check(src, dst, os.path.join(work, "mem"))
    subprocess.run(["rm", "-rf", work])
    return paused


async def recovery(qemu, mode):
    """One postcopy migration ("plain", "preempt" or "tls"), its link
    reset: the seconds from the resume command to postcopy-active on
    both sides"""
    work = tempfile.mkdtemp(prefix="postcopy-bench-")
    tl = Timeline()
    tl.log = lambda who, what: None
    src_extra = tls_args(work, "client") if mode == "tls" else []
    dst_extra = tls_args(work, "server") if mode == "tls" else []
    caps = ("postcopy-preempt",) if mode == "preempt" else ()
    params = {"tls-creds": "tls0"} if mode == "tls" else None
    async with proxied_pair(work, tl, qemu, qemu, src_extra=src_extra,
                            dst_extra=dst_extra) as pair:
        src, dst, proxy = pair
        uri = f"tcp:127.0.0.1:{proxy.port}"
        await enter_postcopy(src, dst, uri, caps=caps, params=params)
        proxy.break_links()
        await states((src, dst), "postcopy-paused")
        marks = (len(src.history), len(dst.history))
        t0 = tl.now()
        await src.cmd("migrate", uri=uri, resume=True)
        for vm, start in zip((src, dst), marks):
            await vm.wait_sequence(start, ["postcopy-active"])
        took = max(vm.history[-1][0] for vm in (src, dst)) - t0
        await complete_and_check(src, dst, os.path.join(work, "mem"))
    subprocess.run(["rm", "-rf", work])
    return took


def summary(values):
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values),
            "max": max(values), "n": len(values)}


def fmt(s, unit="s", scale=1.0, digits=3):
    if not s:
        return "-"
    return (f"{s['min'] * scale:.{digits}f} / {s['median'] * scale:.{digits}f}"
            f" / {s['max'] * scale:.{digits}f} {unit}")


async def run(args):
    results = {}
    if "detection" in args.scenarios:
        results.update(await run_detection(args))
    if "recovery" in args.scenarios:
        results.update(await run_recovery(args))
    if "switchover" in args.scenarios:
        results.update(await run_switchover(args))
    if "stall" in args.scenarios:
        results.update(await run_stall(args))
    if "black-hole" in args.scenarios and os.geteuid() == 0:
        results.update(await run_black_hole(args))
    return results


async def run_detection(args):
    results = {}
    for fault in ("reset", "black-hole"):
        rows = {}
        ours = [await detection(args.ours, True, fault)
                for _ in range(args.reps)] if fault == "black-hole" else []
        ref = []
        if fault == "reset":
            for _ in range(args.reps):
                ours.append(await detection(args.ours, True, fault))
                ref.append(await detection(args.ref, False, fault))
        for i, side in enumerate(("source", "destination")):
            rows[f"ours, {side}"] = summary([p[i] for p in ours])
            if ref:
                rows[f"7.2, {side}"] = summary([p[i] for p in ref])
        if fault == "black-hole":
            rows["ours, T"] = f"postcopy-link-timeout {LINK_TIMEOUT_MS} ms"
            rows["7.2"] = "never detected: QEMU 7.2 has no dead-link " \
                          "detection; recovery needs an operator"
        results[f"detection/{fault}"] = rows
    return results


async def run_recovery(args):
    results = {}
    for mode in ("plain", "preempt", "tls"):
        ours, ref = [], []
        for _ in range(args.reps):
            ours.append(await recovery(args.ours, mode))
            ref.append(await recovery(args.ref, mode))
        results[f"recovery/{mode}"] = {
            "ours (command to both active)": summary(ours),
            "7.2 (command to both active)": summary(ref)}
    return results


async def run_switchover(args):
    results = {}
    handshake, no_handshake, ref = [], [], []
    for _ in range(args.reps):
        handshake.append(await switchover(args.ours, args.ours))
        ref.append(await switchover(args.ref, args.ref))
        no_handshake.append(await switchover(args.ours, args.ref))
    results["switchover downtime"] = {
        "ours to ours (handshake)": summary(handshake),
        "7.2 to 7.2": summary(ref),
        "ours to 7.2 (no handshake, last byte held)": summary(no_handshake)}
    return results


async def run_stall(args):
    results = {}
    for d in OUTAGES:
        ours, ref, cpu = [], [], []
        for _ in range(args.reps):
            stall, c = await outage(args.ours, True, d)
            ours.append(stall)
            cpu.append(c)
            stall, _ = await outage(args.ref, False, d)
            ref.append(stall)
        results[f"stall/outage-{d:g}s"] = {
            "ours (automatic)": summary(ours),
            "7.2 (instant operator)": summary(ref),
            "source CPU while down, ours (cores)": summary(cpu)}
    return results


async def run_black_hole(args):
    paused, active = [], []
    for _ in range(args.reps):
        p, a = await black_hole(args.ours)
        paused.append(p)
        active.append(a)
    return {"black-hole": {
        f"both paused after (T = {LINK_TIMEOUT_MS} ms)": summary(paused),
        "both active after the link's return": summary(active),
        "7.2": "the 7.2 destination never detects a black hole; "
               "recovery needs an operator"}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours", default=OURS)
    ap.add_argument("--ref", default=REF)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scenarios",
                    default="detection,recovery,switchover,stall,black-hole",
                    type=lambda v: v.split(","),
                    help="comma-separated: detection, recovery, switchover, "
                         "stall, black-hole")
    ap.add_argument("--json", default=os.path.join(TOP, "build",
                                                   "recovery-bench.json"))
    args = ap.parse_args()
    t0 = time.monotonic()
    results = asyncio.run(run(args))
    machine = (f"{platform.node()}: {os.cpu_count()} cores, "
               f"{platform.processor() or platform.machine()}, TCG; "
               f"ours {args.ours}, 7.2 {args.ref}; {args.reps} repetitions, "
               f"alternating")
    print(f"Postcopy recovery: {machine}")
    print(f"{'scenario':<24} {'measure':<42} {'min / median / max':>28}"
          f" {'ours/7.2':>9}")
    for name, rows in results.items():
        # The ratio: the first row of ours against the first row of 7.2
        ours = next((v for k, v in rows.items() if k.startswith("ours")),
                    None)
        ref = next((v for k, v in rows.items() if k.startswith("7.2")),
                   None)
        for measure, s in rows.items():
            if isinstance(s, str):
                print(f"{name:<24} {measure:<42} {s}")
                continue
            cpu = "CPU" in measure
            if cpu:
                text = fmt(s, "%", 100.0, 2)
            elif "downtime" in name:
                text = fmt(s, "ms", 1000.0, 2)
            else:
                text = fmt(s, "s", 1.0, 3)
            ratio = ""
            if s is ours and isinstance(ref, dict):
                ratio = f"{ours['median'] / ref['median']:.2f}"
            print(f"{name:<24} {measure:<42} {text:>28} {ratio:>9}")
    with open(args.json, "w") as f:
        json.dump({"machine": machine, "results": results}, f, indent=1)
    print(f"(JSON in {args.json}; {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DemoError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
