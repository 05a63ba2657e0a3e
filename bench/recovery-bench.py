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
import figures  # noqa: E402
from postcopy_harness import (  # noqa: E402
    DemoError, MEM_END, MEM_START, QMP_TIMEOUT, STATE_TIMEOUT, Timeline,
    check_guest_memory, complete_and_check, enter_postcopy, proxied_pair,
    states)

OURS = os.path.join(TOP, "build/qemu/build/qemu-system-x86_64")
REF = os.path.join(TOP, "build/ref/build/qemu-system-x86_64")
OUTAGES = (0.5, 2.0, 10.0)
LINK_TIMEOUT_MS = 2000
GUESTS_GIB = (1, 4, 16)
# A side not paused this long after a silent failure never notices it
NOT_DETECTED_WAIT = 5 * LINK_TIMEOUT_MS / 1000
# The no-failure runs go as fast as the machine can: no bandwidth limit
# that would set their pace instead of the code
NO_FAILURE_BW = 1 << 30
NO_FAILURE_MEM = "1G"
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


async def paused_after(vms, marks, t0, wait):
    """For each of @vms, the seconds from @t0 to its first postcopy-paused
    after its history mark in @marks; None if it did not pause within
    @wait seconds"""
    out = []
    for vm, start in zip(vms, marks):
        try:
            await vm.wait_sequence(start, ["postcopy-paused"],
                                   timeout=max(0.1, wait - (vm.tl.now() - t0)))
        except DemoError:
            out.append(None)
            continue
        out.append(next(t for t, st in vm.history[start:]
                        if st == "postcopy-paused") - t0)
    return out


async def nft_drop(qemu, ours):
    """One postcopy migration between network namespaces, nftables
    dropping every packet: (source and destination paused after, or
    None if not within NOT_DETECTED_WAIT; both active again after the
    link's return, ours only).  Ours recovers by itself; 7.2 goes on
    once the link is back, as TCP retransmits."""
    import importlib
    link_test = importlib.import_module("link-test")
    work = tempfile.mkdtemp(prefix="postcopy-bench-")
    tl = Timeline()
    tl.log = lambda who, what: None
    active = None
    with link_test.Namespaces() as ns:
        async with link_test.netns_pair(ns, work, tl, qemu, qemu) as pair:
            src, dst, uri = pair
            await link_test.start_postcopy(src, dst, uri, LINK_TIMEOUT_MS,
                                           (src, dst) if ours else ())
            if ours:
                await src.cmd("migrate-set-parameters",
                              **{"postcopy-auto-recover": 600000})
            marks = (len(src.history), len(dst.history))
            t0 = tl.now()
            ns.drop()
            paused = await paused_after((src, dst), marks, t0,
                                        NOT_DETECTED_WAIT)
            if ours:
                if None in paused:
                    raise DemoError(f"ours did not pause: {paused}")
                await asyncio.sleep(2.0 + jitter())
                marks = (len(src.history), len(dst.history))
                back = tl.now()
                ns.restore()
                for vm, start in zip((src, dst), marks):
                    await vm.wait_sequence(start, ["postcopy-active"])
                active = max(vm.history[-1][0] for vm in (src, dst)) - back
                await complete_and_check(src, dst,
                                         os.path.join(work, "mem"))
            else:
                if paused != [None, None]:
                    raise DemoError(f"7.2 paused: {paused}")
                # TCP retransmits once the link is back: 7.2 goes on
                ns.restore()
                await complete_and_check(src, dst,
                                         os.path.join(work, "mem"))
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
    seconds from the fault to postcopy-paused on (source, destination),
    None where it did not pause within NOT_DETECTED_WAIT"""
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
        paused = await paused_after((src, dst), marks, t0,
                                    NOT_DETECTED_WAIT)
        if None in paused and (ours or fault == "reset"):
            raise DemoError(f"{fault}: no pause within "
                            f"{NOT_DETECTED_WAIT:.0f} s: {paused}")
        proxy.break_links()
        await states((src, dst), "postcopy-paused")
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


async def start_postcopy_now(src, dst, uri, caps=(), precopy_bw=1 << 20,
                             postcopy_bw=0):
    """Migrate @src to @dst at @uri and switch to postcopy at once, before
    precopy sent much: most pages are still to be sent in postcopy."""
    capabilities = [{"capability": c, "state": True}
                    for c in ("postcopy-ram",) + tuple(caps)]
    for vm in (src, dst):
        await vm.cmd("migrate-set-capabilities", capabilities=capabilities)
    await src.cmd("migrate-set-parameters",
                  **{"max-bandwidth": precopy_bw,
                     "max-postcopy-bandwidth": postcopy_bw})
    await src.cmd("migrate", uri=uri)
    await src.wait_state(["active"])
    await src.cmd("migrate-start-postcopy")
    await states((src, dst), "postcopy-active")
    await dst.wait_running()


async def recovery_bytes(qemu, ours, gib):
    """One postcopy migration of a guest of @gib GiB, its link reset once
    half of the RAM was sent in postcopy: (bytes the destination sent from
    the resume command until both sides were postcopy-active, the
    bitmap-bytes statistic or None for 7.2, the fraction of RAM still to
    send at the failure)"""
    work = tempfile.mkdtemp(prefix="postcopy-bench-")
    tl = Timeline()
    tl.log = lambda who, what: None
    total = gib << 30
    # The guest's own pages (100 MB, asked for as it runs) take most of
    # it; the untouched pages, zero pages of a few bytes each, go fast
    bw = max(8, 2 * gib) << 20
    async with proxied_pair(work, tl, qemu, qemu, mem=f"{gib}G") as pair:
        src, dst, proxy = pair
        uri = f"tcp:127.0.0.1:{proxy.port}"
        await start_postcopy_now(src, dst, uri, postcopy_bw=bw)
        deadline = time.monotonic() + STATE_TIMEOUT
        while True:
            ram = (await src.cmd("query-migrate"))["ram"]
            if ram["remaining"] <= total // 2:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"{gib} GiB: {ram['remaining']} bytes "
                                "still to send after "
                                f"{STATE_TIMEOUT:.0f} s")
            await asyncio.sleep(0.02)
        proxy.break_links()
        left = ram["remaining"] / total
        await states((src, dst), "postcopy-paused")
        before = proxy.forwarded["to-client"]
        await src.cmd("migrate", uri=uri, resume=True)
        await states((src, dst), "postcopy-active", bad=("failed",))
        sent = proxy.forwarded["to-client"] - before
        stat = None
        if ours:
            info = await src.cmd("query-migrate")
            stat = info["postcopy-recovery"]["bitmap-bytes"]
        await complete_and_check(src, dst, os.path.join(work, "mem"))
    subprocess.run(["rm", "-rf", work])
    return sent, stat, left


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def no_failure(qemu):
    """One postcopy migration of a guest of NO_FAILURE_MEM that dirties
    100 MB, switched to postcopy at once and run at full speed, nothing
    failing: total time (ms, as the source's query-migrate says), the
    guest's downtime from the source's STOP to the destination's RESUME
    (ms; query-migrate's downtime is not comparable: ours counts until
    the go-ahead, 7.2 until it sent the state, and 7.2 reported 36150942
    ms once for a postcopy started at once), postcopy-blocktime (ms, the
    destination's),
    pages per second (pages sent over the total time), and the largest
    RSS of the source and of the destination QEMU while it ran (bytes)"""
    work = tempfile.mkdtemp(prefix="postcopy-bench-")
    tl = Timeline()
    tl.log = lambda who, what: None
    async with proxied_pair(work, tl, qemu, qemu,
                            mem=NO_FAILURE_MEM) as pair:
        src, dst, proxy = pair
        uri = f"tcp:127.0.0.1:{proxy.port}"
        capabilities = [{"capability": c, "state": True}
                        for c in ("postcopy-ram", "postcopy-blocktime")]
        for vm in (src, dst):
            await vm.cmd("migrate-set-capabilities",
                         capabilities=capabilities)
        await src.cmd("migrate-set-parameters",
                      **{"max-bandwidth": NO_FAILURE_BW,
                         "max-postcopy-bandwidth": NO_FAILURE_BW})
        with src.qmp.listener("STOP") as stops, \
                dst.qmp.listener("RESUME") as resumes:
            await src.cmd("migrate", uri=uri)
            await src.wait_state(["active"])
            await src.cmd("migrate-start-postcopy")
            t0 = tl.now()
            rss = [0, 0]
            while True:
                for i, vm in enumerate((src, dst)):
                    rss[i] = max(rss[i], rss_bytes(vm.proc.pid))
                if src.state == "completed" and dst.state == "completed":
                    break
                if tl.now() - t0 > STATE_TIMEOUT or \
                        "failed" in (src.state, dst.state):
                    raise DemoError(f"no completion: {src.state}, "
                                    f"{dst.state}")
                await asyncio.sleep(0.01)
            stop = await asyncio.wait_for(stops.get(), QMP_TIMEOUT)
            resume = await asyncio.wait_for(resumes.get(), QMP_TIMEOUT)
        if "postcopy-active" not in (st for _, st in src.history):
            raise DemoError("the migration never was in postcopy")
        info = await src.cmd("query-migrate")
        dinfo = await dst.cmd("query-migrate")
        ram = info["ram"]
        pages = ram["normal"] + ram["duplicate"]
        await dst.cmd("stop")
        await dst.cmd("pmemsave", val=MEM_START, size=MEM_END - MEM_START,
                      filename=os.path.join(work, "mem"))
        _, bad = check_guest_memory(os.path.join(work, "mem"))
        if bad:
            raise DemoError(f"{len(bad)} pages wrong on the destination")
    subprocess.run(["rm", "-rf", work])
    return {"total-time": info["total-time"],
            "stop-to-resume": 1000 * (event_time(resume) - event_time(stop)),
            "postcopy-blocktime": dinfo.get("postcopy-blocktime"),
            "pages-per-second": pages * 1000 / info["total-time"],
            "rss-source": rss[0], "rss-destination": rss[1]}


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
    if "nft-drop" in args.scenarios and os.geteuid() == 0:
        results.update(await run_nft(args))
    if "bytes" in args.scenarios:
        results.update(await run_bytes(args))
    if "overhead" in args.scenarios:
        results.update(await run_overhead(args))
    return results


def detection_rows(ours, ref):
    """Rows per side for the detection times @ours and @ref (lists of
    (source, destination), None where not detected)"""
    rows = {}
    for who, runs in (("ours", ours), ("7.2", ref)):
        for i, side in enumerate(("source", "destination")):
            times = [p[i] for p in runs]
            if None in times:
                missed = times.count(None)
                rows[f"{who}, {side}"] = (
                    f"never detected: not paused within "
                    f"{NOT_DETECTED_WAIT:.0f} s in {missed} of "
                    f"{len(times)} runs")
            else:
                rows[f"{who}, {side}"] = summary(times)
    return rows


async def run_detection(args):
    results = {}
    for fault in ("reset", "black-hole"):
        ours, ref = [], []
        for _ in range(args.reps):
            ours.append(await detection(args.ours, True, fault))
            ref.append(await detection(args.ref, False, fault))
        rows = detection_rows(ours, ref)
        if fault == "black-hole":
            rows["ours, T"] = f"postcopy-link-timeout {LINK_TIMEOUT_MS} ms"
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


async def run_nft(args):
    """nftables drops every packet between two network namespaces"""
    ours, ref, active = [], [], []
    for _ in range(args.reps):
        paused, a = await nft_drop(args.ours, True)
        ours.append(paused)
        active.append(a)
        paused, _ = await nft_drop(args.ref, False)
        ref.append(paused)
    rows = detection_rows(ours, ref)
    rows["ours, T"] = f"postcopy-link-timeout {LINK_TIMEOUT_MS} ms"
    rows["ours, both active after the link's return"] = summary(active)
    return {"detection/nft-drop": rows}


async def run_bytes(args):
    results = {}
    for gib in GUESTS_GIB:
        ours, ref, stat, left = [], [], [], []
        for _ in range(args.reps):
            sent, st, lf = await recovery_bytes(args.ours, True, gib)
            ours.append(sent)
            stat.append(st)
            left.append(lf)
            sent, _, lf = await recovery_bytes(args.ref, False, gib)
            ref.append(sent)
            left.append(lf)
        results[f"bytes/{gib}GiB"] = {
            "ours (return path, resume to active)": summary(ours),
            "7.2 (return path, resume to active)": summary(ref),
            "ours: bitmap-bytes statistic": summary(stat),
            "RAM still to send at the failure (%)":
                summary([100 * v for v in left])}
    return results


def spread(values):
    """The run-to-run noise of @values: their interquartile range, in
    percent of their median"""
    if len(values) < 4 or not statistics.median(values):
        return "-"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{100 * (q3 - q1) / statistics.median(values):.0f} %"


async def run_overhead(args):
    """Short runs, noisy: ten times the repetitions"""
    ours, ref = [], []
    for _ in range(10 * args.reps):
        ours.append(await no_failure(args.ours))
        ref.append(await no_failure(args.ref))
    results = {}
    for key, name in (("total-time", "overhead/total-time"),
                      ("stop-to-resume", "overhead/guest-downtime"),
                      ("postcopy-blocktime", "overhead/blocktime"),
                      ("pages-per-second", "overhead/pages-per-second"),
                      ("rss-source", "memory/source-rss"),
                      ("rss-destination", "memory/destination-rss")):
        o = [r[key] for r in ours if r[key] is not None]
        r = [r[key] for r in ref if r[key] is not None]
        results[name] = {"ours": summary(o), "7.2": summary(r),
                         "noise: interquartile range / median":
                             f"ours {spread(o)}, 7.2 {spread(r)}"}
    return results


# How each scenario's figures print: unit, scale, digits
UNITS = {
    "detection/": ("ms", 1000.0, 1),
    "bytes/": ("B", 1.0, 0),
    "overhead/total-time": ("ms", 1.0, 0),
    "overhead/guest-downtime": ("ms", 1.0, 2),
    "overhead/blocktime": ("ms", 1.0, 0),
    "overhead/pages-per-second": ("pages/s", 1.0, 0),
    "memory/": ("MiB", 1.0 / (1 << 20), 1),
    "switchover downtime": ("ms", 1000.0, 2),
}


def unit_of(name, measure):
    if "CPU" in measure:
        return "%", 100.0, 2
    if "(%)" in measure:
        return "%", 1.0, 1
    return next((u for prefix, u in UNITS.items()
                 if name.startswith(prefix)), ("s", 1.0, 3))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours", default=OURS)
    ap.add_argument("--ref", default=REF)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scenarios",
                    default="detection,nft-drop,recovery,switchover,stall,"
                            "bytes,overhead",
                    type=lambda v: v.split(","),
                    help="comma-separated: detection, nft-drop (root), "
                         "recovery, switchover, stall, bytes, overhead")
    ap.add_argument("--json", default=os.path.join(TOP, "build",
                                                   "recovery-bench.json"))
    ap.add_argument("--figure", default=os.path.join(TOP, "build",
                                                     "recovery-bench.svg"),
                    help="the figure: SVG, or PNG if it ends in .png")
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
            text = fmt(s, *unit_of(name, measure))
            ratio = ""
            if s is ours and isinstance(ref, dict) and ref["median"]:
                ratio = f"{ours['median'] / ref['median']:.3g}"
            print(f"{name:<24} {measure:<42} {text:>28} {ratio:>9}")
    with open(args.json, "w") as f:
        json.dump({"machine": machine, "results": results}, f, indent=1)
    try:
        figure = figures.bench(args.figure, results,
                               f"{platform.node()}, {os.cpu_count()} cores, "
                               f"TCG, {args.reps} repetitions")
    except figures.FigureError as e:
        print(f"bench: no figure: {e}", file=sys.stderr)
        return 1
    where = f"figure in {figure}" if figure else "no figure: nothing to draw"
    print(f"(JSON in {args.json}, {where}; {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DemoError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
