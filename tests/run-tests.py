#!/usr/bin/env python3
"""Run the project's tests and print one summary line.

Runs every test binary (TAP output, GLib test framework) and every test
script listed in SUITES, each with a time limit.  Prints each result, the
skipped tests by name with their reason, and ends with the line

    N passed, N failed, N skipped

Exits non-zero if anything failed, timed out or could not run.
"""

import argparse
import os
import re
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def suites(build):
    """name, command, time limit in seconds"""
    return [
        ("migration-test",
         [os.path.join(build, "tests/qtest/migration-test"), "--tap", "-k"],
         2400),
        ("qmp-test",
         [os.path.join(build, "tests/qtest/qmp-test"), "--tap", "-k"],
         300),
        # Only the series' case: the others boot every machine type
        ("hmp-test",
         [os.path.join(build, "tests/qtest/test-hmp"), "--tap", "-k",
          "-p", "/x86_64/hmp/options-any-order"],
         120),
        ("bitmap-rle-test",
         [os.path.join(build, "tests/unit/test-bitmap-rle"), "--tap", "-k"],
         60),
        ("interop-test",
         [sys.executable, os.path.join(TOP, "tests/interop-test.py"),
          "--ours", os.path.join(build, "qemu-system-x86_64")],
         900),
        ("link-test",
         [sys.executable, os.path.join(TOP, "tests/link-test.py"),
          "--ours", os.path.join(build, "qemu-system-x86_64")],
         900),
        ("switchover-test",
         [sys.executable, os.path.join(TOP, "tests/switchover-test.py"),
          "--ours", os.path.join(build, "qemu-system-x86_64")],
         900),
        ("guest-test",
         [sys.executable, os.path.join(TOP, "tests/guest-test.py"),
          "--ours", os.path.join(build, "qemu-system-x86_64")],
         900),
        ("libvirt-test",
         [sys.executable, os.path.join(TOP, "tests/libvirt-test.py"),
          "--ours", os.path.join(build, "qemu-system-x86_64")],
         1500),
    ]

# Comment lines shown after a failed case (its timeline and log tails)
FAILURE_LINES = 80

TAP_RE = re.compile(r"^(ok|not ok) \d+ (\S+)(?:\s*#\s*(.*))?")


def run_suite(name, cmd, limit, verbose, only, qemu):
    env = dict(os.environ, QTEST_QEMU_BINARY=qemu)
    if only and cmd[0] != sys.executable:
        # GLib: every test whose path starts with @only
        cmd = cmd + ["-r", only]
    results = []
    log_path = os.path.join(TOP, "build", "test-logs",
                            os.path.basename(os.path.dirname(qemu)) + "-" +
                            name + ".log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env,
                                text=True, errors="replace",
                                start_new_session=True)
        timed_out = False
        telling = 0
        try:
            deadline = start + limit
            for line in proc.stdout:
                log.write(line)
                if verbose:
                    sys.stdout.write("    " + line)
                m = TAP_RE.match(line)
                if not verbose and line.startswith(("ERROR:", "Bail out!")):
                    # A GLib test's failed assertion
                    print("    " + line.rstrip(), flush=True)
                if telling and not m and line.startswith("#"):
                    # What a script case says about its failure
                    telling -= 1
                    print("    " + line.rstrip(), flush=True)
                    continue
                telling = 0
                if m:
                    status, path, comment = m.groups()
                    comment = (comment or "").strip()
                    if comment.startswith("SKIP"):
                        reason = comment[4:].strip()
                        results.append(("skip", path, reason))
                        print(f"  SKIP {path}: {reason}", flush=True)
                    else:
                        res = "pass" if status == "ok" else "fail"
                        why = comment if res == "fail" else ""
                        results.append((res, path, why))
                        print(f"  {res.upper()} {path}" +
                              (f": {why}" if why else ""), flush=True)
                        if res == "fail" and not verbose:
                            telling = FAILURE_LINES
                if time.monotonic() > deadline:
                    timed_out = True
                    break
        finally:
            if timed_out:
                os.killpg(proc.pid, 9)
            try:
                rc = proc.wait(timeout=max(1, start + limit -
                                           time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                rc = proc.wait()
                timed_out = True
    took = time.monotonic() - start
    if timed_out:
        results.append(("fail", name, ""))
        print(f"  FAIL {name}: timed out after {limit}s (log {log_path})")
    elif rc != 0 and not any(r[0] == "fail" for r in results):
        # A crash or abort outside a reported test case still fails.
        results.append(("fail", name, ""))
        print(f"  FAIL {name}: exit status {rc} (log {log_path})")
    elif not results:
        results.append(("fail", name, ""))
        print(f"  FAIL {name}: ran no test (log {log_path})")
    print(f"  {name}: {took:.0f}s", flush=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show the output of every test")
    ap.add_argument("-s", "--suite", action="append",
                    help="run only this suite (repeatable)")
    ap.add_argument("-p", "--path",
                    help="run only the GLib tests under this path "
                    "(with --suite; script suites run whole)")
    ap.add_argument("--build", default=os.path.join(TOP, "build", "qemu",
                                                    "build"),
                    help="the QEMU build to test (default: %(default)s)")
    args = ap.parse_args()

    qemu = os.path.join(args.build, "qemu-system-x86_64")
    if not os.access(qemu, os.X_OK):
        print(f"run-tests: {qemu} is not built; run make build",
              file=sys.stderr)
        return 2

    results = []
    for name, cmd, limit in suites(args.build):
        if args.suite and name not in args.suite:
            continue
        print(f"== {name}", flush=True)
        results += run_suite(name, cmd, limit, args.verbose, args.path, qemu)

    passed = sum(1 for r in results if r[0] == "pass")
    failed = [r for r in results if r[0] == "fail"]
    skipped = [r for r in results if r[0] == "skip"]
    if skipped:
        print("skipped:")
        for _, path, reason in skipped:
            print(f"  {path}: {reason}")
    if failed:
        print("failed:")
        for _, path, why in failed:
            print(f"  {path}" + (f": {why}" if why else ""))
    print(f"{passed} passed, {len(failed)} failed, {len(skipped)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
