"""Two libvirt hosts on one machine, for driving migrations with virsh.

Each host is a libvirtd of Debian's packages in its own network namespace
(a veth pair joins the two) and its own mount namespace, where its
/etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and
/var/log/libvirt are directories of the host's root under the work
directory.  Each has its own host_uuid and hostname, so libvirt sees two
machines.  QEMU runs as root, without a security driver, cgroups or
namespaces: what libvirt does for us is the migration protocol, not the
confinement.  No systemd, no dnsmasq, no libvirt network: the guest has
no NIC.

virsh runs in the test's own namespaces and reaches each libvirtd through
its socket (`qemu:///system?socket=...`), so a migration is driven by the
client, as `virsh migrate` does without --p2p.

Faults are nftables rules in either namespace (a reset, a black hole), or
a socat relay on the destination host that can be killed.

Used by tests/libvirt-test.py and demo/libvirt-demo.py.
"""

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid

import guest

NET = "10.99.0"
MIGRATION_PORT = 49152
SOCKET_TIMEOUT = 30.0


class Unavailable(Exception):
    """libvirt or namespaces cannot run here (the reason)."""


class LibvirtError(Exception):
    pass


def unavailable_reason():
    """Why two libvirt hosts cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("libvirtd", "virsh", "ip", "nft", "unshare", "socat"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") +
                            ":/usr/sbin:/sbin"):
            return f"{tool} is not installed"
    probe = f"pclv-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe],
                      capture_output=True).returncode != 0:
        return "cannot create a network namespace"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ensure_qemu_account():
    """libvirt looks up its QEMU user and group at start, even when
    qemu.conf says root: create them as the libvirt-daemon-system package
    would."""
    if subprocess.run(["getent", "group", "kvm"],
                      capture_output=True).returncode:
        subprocess.run(["groupadd", "-r", "kvm"], check=True)
    if subprocess.run(["getent", "group", "libvirt-qemu"],
                      capture_output=True).returncode:
        subprocess.run(["groupadd", "-r", "libvirt-qemu"], check=True)
    if subprocess.run(["getent", "passwd", "libvirt-qemu"],
                      capture_output=True).returncode:
        subprocess.run(["useradd", "-r", "-g", "kvm", "-d",
                        "/var/lib/libvirt", "-s", "/usr/sbin/nologin",
                        "libvirt-qemu"], check=True)


# The directories each host gets for itself: (where libvirt looks, the
# name of our directory under the host's root)
PRIVATE_DIRS = (("/etc/libvirt", "etc"), ("/run/libvirt", "run"),
                ("/var/lib/libvirt", "lib"), ("/var/cache/libvirt", "cache"),
                ("/var/log/libvirt", "log"))

LIBVIRTD_CONF = """\
host_uuid = "{uuid}"
log_filters = "{filters}"
log_outputs = "1:file:/var/log/libvirt/libvirtd.log"
"""
# libvirt's own account of the migration steps and QMP traffic, and
# warnings from everything else
LOG_FILTERS = ("1:qemu.qemu_migration 1:qemu.qemu_monitor_json "
               "1:qemu.qemu_process 1:remote.remote_driver 3:*")

# Root, no confinement; QEMU's stdout/stderr to a plain file (no virtlogd).
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
seccomp_sandbox = 0
stdio_handler = "file"
"""


class Host:
    """One libvirtd in its own network and mount namespace."""

    def __init__(self, name, root, addr, tag):
        self.name = name
        self.root = root
        self.addr = addr
        self.netns = f"pclv-{tag}-{name}"
        self.uuid = str(uuid.uuid4())
        self.uri = f"qemu:///system?socket={root}/run/libvirt-sock"
        self.proc = None
        self.events = None
        self.event_lines = []
        self._event_task = None

    def path(self, inside):
        """Where a file that this host sees at @inside (under one of its
        private directories) is, seen from outside."""
        for where, ours in PRIVATE_DIRS:
            if inside.startswith(where + "/"):
                return os.path.join(self.root, ours,
                                    inside[len(where) + 1:])
        return inside

    def ns(self, *cmd):
        return ["ip", "netns", "exec", self.netns] + list(cmd)

    async def start(self):
        for where, ours in PRIVATE_DIRS:
            os.makedirs(os.path.join(self.root, ours), exist_ok=True)
            os.makedirs(where, exist_ok=True)   # the mount point
        os.makedirs(os.path.join(self.root, "log", "qemu"), exist_ok=True)
        with open(os.path.join(self.root, "etc", "libvirtd.conf"), "w") as f:
            f.write(LIBVIRTD_CONF.format(uuid=self.uuid,
                                        filters=LOG_FILTERS))
        with open(os.path.join(self.root, "etc", "qemu.conf"), "w") as f:
            f.write(QEMU_CONF)
        mounts = "".join(f"mount --bind {os.path.join(self.root, ours)} "
                         f"{where} && "
                         for where, ours in PRIVATE_DIRS)
        script = (f"{mounts}hostname host{self.name} && exec libvirtd "
                  f"--pid-file /run/libvirt/libvirtd.pid")
        log = open(os.path.join(self.root, "libvirtd.out"), "wb")
        # ip netns exec, unshare and sh all exec: the process is libvirtd
        self.proc = await asyncio.create_subprocess_exec(
            *self.ns("unshare", "--mount", "--propagation", "private",
                     "--uts", "sh", "-c", script),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while True:
            if self.proc.returncode is not None:
                raise LibvirtError(f"libvirtd of host {self.name} exited: "
                                   f"{self.tail('libvirtd.out')}")
            if os.path.exists(os.path.join(self.root, "run",
                                           "libvirt-sock")):
                rc, out = await self.virsh_rc("list", "--name")
                if rc == 0:
                    break
            if time.monotonic() > deadline:
                raise LibvirtError(f"libvirtd of host {self.name} did not "
                                   f"answer in {SOCKET_TIMEOUT:.0f} s")
            await asyncio.sleep(0.1)
        await self._watch_events()

    def tail(self, name, lines=5):
        try:
            with open(os.path.join(self.root, name), errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def _watch_events(self):
        """Record every libvirt event of this host, as virsh prints them."""
        self.events = await asyncio.create_subprocess_exec(
            "virsh", "-c", self.uri, "event", "--all", "--loop",
            "--timestamp", stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

        async def read():
            while True:
                line = await self.events.stdout.readline()
                if not line:
                    return
                line = line.decode(errors="replace").strip()
                if line:
                    self.event_lines.append((time.monotonic(), line))
        self._event_task = asyncio.ensure_future(read())

    def events_since(self, since=0.0):
        return [line for t, line in self.event_lines if t >= since]

    async def wait_event(self, pattern, since=0.0, timeout=60.0):
        """Wait for an event line matching @pattern, recorded at or after
        @since (time.monotonic()); returns its time."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for t, line in self.event_lines:
                if t >= since and rx.search(line):
                    return t
            if time.monotonic() > deadline:
                raise LibvirtError(
                    f"host {self.name}: no event /{pattern}/ in "
                    f"{timeout:.0f} s; seen: "
                    f"{'; '.join(self.events_since(since)[-6:])}")
            await asyncio.sleep(0.05)

    async def virsh_rc(self, *args, timeout=120.0):
        proc = await asyncio.create_subprocess_exec(
            "virsh", "-c", self.uri, *args, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise LibvirtError(f"host {self.name}: virsh {' '.join(args)} "
                               f"did not return in {timeout:.0f} s")
        return proc.returncode, out.decode(errors="replace").strip()

    async def virsh(self, *args, timeout=120.0):
        rc, out = await self.virsh_rc(*args, timeout=timeout)
        if rc:
            raise LibvirtError(f"host {self.name}: virsh {' '.join(args)}: "
                               f"{out}")
        return out

    async def state(self, dom):
        """'running (migrated)', 'paused (post-copy failed)', ... or None
        when the host has no such domain."""
        rc, out = await self.virsh_rc("domstate", "--reason", dom)
        return out if rc == 0 else None

    async def wait_state(self, dom, want, timeout=60.0):
        """Wait until domstate --reason says @want (None: no domain)."""
        deadline = time.monotonic() + timeout
        while True:
            got = await self.state(dom)
            if got == want:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise LibvirtError(f"host {self.name}: domain {dom} is "
                                   f"{got!r}, not {want!r}, after "
                                   f"{timeout:.0f} s")
            await asyncio.sleep(0.1)

    async def qmp(self, dom, command, **args):
        """A QMP command through libvirt; returns its "return"."""
        req = {"execute": command}
        if args:
            req["arguments"] = args
        out = await self.virsh("qemu-monitor-command", dom, json.dumps(req))
        return json.loads(out)["return"]

    def qemu_log(self, dom=None):
        """What QEMU of domain @dom printed on this host (libvirt's log)."""
        path = self.path(f"/var/log/libvirt/qemu/{dom or DOMAIN}.log")
        try:
            with open(path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    async def wait_qemu_log(self, pattern, count=1, timeout=60.0):
        """Wait until QEMU printed @count lines matching @pattern."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while len(rx.findall(self.qemu_log())) < count:
            if time.monotonic() > deadline:
                raise LibvirtError(f"host {self.name}: QEMU did not print "
                                   f"/{pattern}/ {count} times in "
                                   f"{timeout:.0f} s")
            await asyncio.sleep(0.05)

    def nft(self, ruleset):
        subprocess.run(self.ns("nft", "-f", "-"), input=ruleset.encode(),
                       check=True)

    def nft_flush(self):
        subprocess.run(self.ns("nft", "flush", "ruleset"), check=True)

    async def stop(self):
        """Destroy the domains, stop libvirtd, end whatever still runs in
        the namespace and remove it."""
        if self.proc and self.proc.returncode is None:
            rc, out = await self.virsh_rc("list", "--name", timeout=30)
            for dom in out.split() if rc == 0 else ():
                await self.virsh_rc("destroy", dom, timeout=30)
        for proc in (self.events, self.proc):
            if proc and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except asyncio.TimeoutError:
                    proc.kill()
                    await proc.wait()
        if self._event_task:
            self._event_task.cancel()
        pids = subprocess.run(["ip", "netns", "pids", self.netns],
                              capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", self.netns],
                       capture_output=True)


class Pair:
    """Host A (the source, NET.1) and host B (the destination, NET.2),
    joined by a veth pair.  B also has NET.3, the address of its relay."""

    def __init__(self, work):
        self.work = work
        tag = str(os.getpid())
        self.a = Host("A", os.path.join(work, "hostA"), f"{NET}.1", tag)
        self.b = Host("B", os.path.join(work, "hostB"), f"{NET}.2", tag)
        self.relay_addr = f"{NET}.3"
        self.veth = (f"pclv{tag}a", f"pclv{tag}b")
        self.relay = None

    async def start(self):
        reason = unavailable_reason()
        if reason:
            raise Unavailable(reason)
        ensure_qemu_account()
        for host in (self.a, self.b):
            subprocess.run(["ip", "netns", "add", host.netns], check=True)
            subprocess.run(host.ns("ip", "link", "set", "lo", "up"),
                           check=True)
        subprocess.run(["ip", "link", "add", self.veth[0], "type", "veth",
                        "peer", "name", self.veth[1]], check=True)
        for host, dev, addrs in ((self.a, self.veth[0], (self.a.addr,)),
                                 (self.b, self.veth[1],
                                  (self.b.addr, self.relay_addr))):
            subprocess.run(["ip", "link", "set", dev, "netns", host.netns],
                           check=True)
            for addr in addrs:
                subprocess.run(host.ns("ip", "addr", "add", f"{addr}/24",
                                       "dev", dev), check=True)
            subprocess.run(host.ns("ip", "link", "set", dev, "up"),
                           check=True)
        await asyncio.gather(self.a.start(), self.b.start())

    async def stop(self):
        await self.kill_relay()
        await asyncio.gather(self.a.stop(), self.b.stop(),
                             return_exceptions=True)

    # Faults.  Rules never touch RST segments, so the resets they make
    # reach the other end.

    def reset_link(self, port=MIGRATION_PORT, on="B"):
        """Host @on answers every segment of the migration's connections
        with a TCP reset, new connections included: on B, those that
        arrive; on A, those that leave (the reset goes to A's own
        socket).  Either way the reset carries the sequence number the
        reset socket expects next, so the kernel cannot dismiss it."""
        host = self.b if on == "B" else self.a
        hook = "input" if on == "B" else "output"
        host.nft("table inet pcfault {\n chain c { type filter hook "
                 f"{hook} priority 0; tcp dport {port} tcp flags & rst == 0 "
                 "reject with tcp reset; }\n}\n")

    def drop_link(self, port=MIGRATION_PORT, on="B", quota=None):
        """Host @on silently drops every segment of the migration's
        connections, both ways.  With @quota, only what host @on sends,
        once @quota bytes of it went through: the peer then hears nothing
        more, its acknowledgements included."""
        host = self.b if on == "B" else self.a
        local, remote = ("sport", "dport") if on == "B" else ("dport",
                                                              "sport")
        rules = (" chain out { type filter hook output priority 0; "
                 f"tcp {local} {port} "
                 f"{f'quota over {quota} bytes ' if quota else ''}drop; }}\n")
        if not quota:
            rules += (" chain in { type filter hook input priority 0; "
                      f"tcp {remote} {port} drop; }}\n")
        host.nft("table inet pcfault {\n" + rules + "}\n")

    def restore_link(self):
        for host in (self.a, self.b):
            host.nft_flush()

    async def start_relay(self, port, target_port):
        """socat on host B: NET.3:@port to 127.0.0.1:@target_port."""
        await self.kill_relay()
        self.relay = await asyncio.create_subprocess_exec(
            *self.b.ns("socat", f"TCP-LISTEN:{port},bind={self.relay_addr},"
                       "reuseaddr,fork", f"TCP:127.0.0.1:{target_port}"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while not self._relay_listening(port):
            if self.relay.returncode is not None:
                raise LibvirtError("socat relay exited")
            if time.monotonic() > deadline:
                raise LibvirtError("socat relay does not listen")
            await asyncio.sleep(0.05)

    def _relay_listening(self, port):
        out = subprocess.run(self.b.ns("ss", "-Htln", "sport", f"= :{port}"),
                             capture_output=True, text=True).stdout
        return self.relay_addr in out

    async def kill_relay(self):
        """Kill the relay and the children it forked for connections."""
        if not self.relay:
            return
        relay, self.relay = self.relay, None
        subprocess.run(["pkill", "-KILL", "-P", str(relay.pid)],
                       capture_output=True)
        if relay.returncode is None:
            relay.kill()
        await relay.wait()


DOMAIN = "pcguest"
# The guest's serial console, on each host in its own /var/log/libvirt
CONSOLE = "/var/log/libvirt/qemu/pcguest-console.log"

DOMAIN_XML = """\
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{mem_mb}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{emulator}</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'><source path='{console}'/></serial>
    <memballoon model='none'/>
  </devices>{commandline}
</domain>
"""


def domain_xml(emulator, qemu_args=(), name=DOMAIN):
    """The test guest as a libvirt domain: no disk, no NIC; @qemu_args go
    to QEMU's command line through <qemu:commandline>."""
    kernel, initrd, append = guest.boot_files()
    # Under TCG the vCPU thread holds the BQL while it delivers an
    # interrupt, and reads the IDT through the guest's page tables then.
    # If that walk meets a page still on the source while the link is
    # down, the destination's main loop waits for the BQL until the page
    # comes, and libvirt's migrate-recover, sent in-band, is never
    # answered: a deadlock (the README's known limits; KVM vCPUs do not
    # hold the BQL on guest page faults).  The page seen missing was a
    # page table of the IDT's mapping (the cpu entry area).  Measured
    # with the reset case: 2 deadlocks in 14 runs with the guest's page
    # table isolation, none in 8 without it.
    append += " nopti"
    commandline = ""
    if qemu_args:
        commandline = ("\n  <qemu:commandline>\n" +
                       "".join(f"    <qemu:arg value='{a}'/>\n"
                               for a in qemu_args) +
                       "  </qemu:commandline>")
    return DOMAIN_XML.format(name=name, mem_mb=int(guest.GUEST_MEM[:-1]),
                             kernel=kernel, initrd=initrd, cmdline=append,
                             emulator=emulator, console=CONSOLE,
                             commandline=commandline)
