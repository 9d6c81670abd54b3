"""The lab: five real hosts (network namespaces) with real sshd, HAProxy, a backend and nftables.

Must run inside ``tests/lab/enter`` (a private ``unshare --net --mount --pid`` namespace): it
refuses to build anywhere else, so it can never touch the machine's own network.

    bastion (lab root ns) 198.19.0.1 ─┬─ mgmt ─ client  198.19.0.11
                                      ├─ mgmt ─ router  198.19.0.12
                                      ├─ mgmt ─ proxy   198.19.0.13   (sudo = true)
                                      ├─ mgmt ─ backend 198.19.0.14
                                      └─ mgmt ─ nat     198.19.0.15

    client eth1 198.18.1.10 ── eth1 198.18.1.1 router eth2 198.18.2.1 ── eth1 198.18.2.10 proxy
    proxy eth2 198.18.3.1 ── eth1 198.18.3.10 backend
    client eth2 198.18.4.10 ── eth1 198.18.4.1 nat eth2 198.18.5.2 ── eth3 198.18.5.1 router

The nat host is a masquerading gateway (nftables, every connection gets a new source port from
20000-29999). ``Lab.via_nat()`` sends the client's traffic to the proxy and the backend through it
(from 198.18.4.10) instead of straight to the router; ``Lab.direct()`` undoes it.

HAProxy on the proxy listens on 198.18.2.10:8080 and :8081 and forwards to the backend on :80.
No namespace has a route out; every address is in 198.18.0.0/15.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from remote.commands import RUN_DIR

REPO = Path(__file__).resolve().parents[2]

CLIENT_IP, ROUTER_CLIENT_SIDE, ROUTER_PROXY_SIDE = "198.18.1.10", "198.18.1.1", "198.18.2.1"
PROXY_FRONT, PROXY_BACK, BACKEND_IP = "198.18.2.10", "198.18.3.1", "198.18.3.10"
CLIENT_NAT_SIDE, NAT_INSIDE, NAT_OUTSIDE, ROUTER_NAT_SIDE = "198.18.4.10", "198.18.4.1", "198.18.5.2", "198.18.5.1"
NAT_PORTS = (20000, 29999)
MGMT = {
    "client": "198.19.0.11",
    "router": "198.19.0.12",
    "proxy": "198.19.0.13",
    "backend": "198.19.0.14",
    "nat": "198.19.0.15",
}
HOSTS = list(MGMT)
LAB_USERS = {"captest": 4242, "nosudo": 4243}
NO_SFTP = "backend"  # the lab host whose sshd offers no SFTP subsystem


# 8080: HTTP. 8081: HTTP (the router forges resets for it). 8082: TCP with nolinger, so a reset
# from the backend mid-response makes HAProxy reset the client too (measured: without nolinger it
# closes with a FIN). 8083: HTTP with nolinger and a policy: /admin is rejected with a reset.
# Measured on HAProxy 2.6: with nolinger it sends FIN, then closes abortively; the RST goes out
# only if the client has not closed first. curl closes at once (RST in 1 run of 3), so these
# scenarios use clients.py hold, which keeps its end open (RST in 10 runs of 10).
# timeout http-request 2s: a request the router's forged reset cut off leaves HAProxy's side
# open; it answers 408 once this runs out and the client's stack, which has no such connection
# any more, resets it. With the default (timeout client, 30 s) that genuine client reset landed
# in a later test's window, ahead of the reset that test reproduced (seen in CI).
HAPROXY_CFG = f"""global
  maxconn 512
  log stdout format raw local0
defaults
  mode http
  log global
  option httplog
  timeout connect 2s
  timeout http-request 2s
  timeout client 30s
  timeout server 30s
frontend fe_main
  bind {PROXY_FRONT}:8080
  default_backend be
frontend fe_pay
  bind {PROXY_FRONT}:8081
  default_backend be
frontend fe_tcp
  mode tcp
  option tcplog
  option nolinger
  bind {PROXY_FRONT}:8082
  default_backend be_tcp
frontend fe_policy
  option nolinger
  bind {PROXY_FRONT}:8083
  http-request reject if {{ path_beg /admin }}
  default_backend be
backend be
  server b1 {BACKEND_IP}:80
backend be_tcp
  mode tcp
  server b1 {BACKEND_IP}:80
"""


class LabError(RuntimeError):
    pass


def in_lab() -> bool:
    return os.environ.get("CAPTURE_ALL_LAB") == "1"


def sh(*argv: str, check: bool = True, ns: str | None = None, input: str | None = None) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    p = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)} -> {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def wait_banner(addr: str, port: int = 22, timeout: float = 10.0) -> None:
    """Readiness is the SSH-2.0 banner, never a sleep."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((addr, port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-2.0"):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.02)
    raise LabError(f"sshd at {addr}:{port} not ready: {last}")


# root's ~/.bashrc inside the lab (bound over the machine's file in the lab's private mount
# namespace; the machine's own is never touched). A slow login, as production hosts have (a version
# manager's init, a banner script): 80 processes and about 0.13 s a shell, as the pyenv init of this
# machine's own file costs, but nothing shared between the lab's hosts. The machine's own file
# queued every lab host of one disk on pyenv's one lock file, and a shell killed while it held the
# lock (a session's end) left it behind: every later login then waited 60 s on it, every lab test
# failed (a CI run did). Real hosts each have their own disk.
SLOW_LOGIN = """\
# capture-all lab: a slow login file of our own (tests/lab/labnet.py)
_lab_i=0
while [ "$_lab_i" -lt 40 ]; do _lab_v=$(basename "$(readlink -f /bin/sh)"); _lab_i=$((_lab_i + 1)); done
unset _lab_i _lab_v
"""


def private_mounts(root: Path, *, login_files: bool = True) -> None:
    """The lab's own mounts, inside its private mount namespace: /run on tmpfs (`ip netns add`
    leaves files in /run/netns, sshd wants /run/sshd), the kernel's tracefs, and root's login
    file: with ``login_files`` a slow one (SLOW_LOGIN, as on a production host: the tool must not
    need many shells), without an empty one (the fan-out benchmark's default)."""
    sh("mount", "--make-rprivate", "/")
    sh("mount", "-t", "tmpfs", "-o", "mode=755", "lab-run", "/run")
    if not Path("/sys/kernel/tracing/instances").is_dir():
        sh("mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing")
    for d in ("/run/netns", "/run/sshd"):
        os.makedirs(d, exist_ok=True)
    bashrc = Path.home() / ".bashrc"
    if bashrc.exists():  # a bind needs a file to cover: a machine without one logs in with none
        ours = root / "lab.bashrc"
        ours.write_text(SLOW_LOGIN if login_files else "")
        sh("mount", "--bind", str(ours), str(bashrc))


@dataclass
class Lab:
    root: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    host_keys: dict[str, str] = field(default_factory=dict)
    without_tracefs: set[str] = field(default_factory=set)  # hosts whose sshd runs without tracefs
    forced: set[str] = field(default_factory=set)  # hosts whose sshd runs a ForceCommand

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.toml"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def remote_tmp(self) -> Path:
        return self.root / "remote-tmp"

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def build(cls, root: Path | None = None) -> Lab:
        if not in_lab():
            raise LabError("the lab must be built inside tests/lab/enter (a private network namespace)")
        existing = [ln.split(":")[1].strip() for ln in sh("ip", "-o", "link", "show").splitlines() if ln.strip()]
        if existing != ["lo"]:
            # A fresh network namespace has only lo; anything else means we are not in ours.
            raise LabError(f"refusing to build: this network namespace already has {existing}")
        lab = cls(Path(root) if root else Path(tempfile.mkdtemp(prefix="capture-all-lab-")))
        lab.root.chmod(0o755)
        lab._private_mounts()
        lab._keys()
        lab._network()
        lab._sshd_all()
        lab._services()
        lab._write_inventory()
        return lab

    def _private_mounts(self) -> None:
        private_mounts(self.root)
        self.remote_tmp.mkdir(mode=0o1777, exist_ok=True)
        self.remote_tmp.chmod(0o1777)
        self._users()

    def _users(self) -> None:
        """Two unprivileged login users, visible only inside the lab's mount namespace:
        ``captest`` may ``sudo`` without a password (the production setup), ``nosudo`` may not."""
        etc = self.root / "etc"
        etc.mkdir()
        extra = {"passwd": "", "shadow": "", "group": ""}
        for name, uid in LAB_USERS.items():
            home = self.root / "home" / name
            home.mkdir(parents=True)
            os.chown(home, uid, uid)
            extra["passwd"] += f"{name}:x:{uid}:{uid}:capture-all lab:{home}:/bin/sh\n"
            extra["shadow"] += f"{name}:*:20000:0:99999:7:::\n"  # '*': no password, not locked
            extra["group"] += f"{name}:x:{uid}:\n"
        for name, lines in extra.items():
            copy = etc / name
            copy.write_text(Path(f"/etc/{name}").read_text() + lines)
            copy.chmod(0o640 if name == "shadow" else 0o644)
            sh("mount", "--bind", str(copy), f"/etc/{name}")
        sudoers = etc / "sudoers.d"
        shutil.copytree("/etc/sudoers.d", sudoers)
        rule = sudoers / "capture-all-lab"
        rule.write_text("captest ALL=(root) NOPASSWD: ALL\n")
        rule.chmod(0o440)
        sh("mount", "--bind", str(sudoers), "/etc/sudoers.d")

    def _keys(self) -> None:
        key = self.root / "id_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "capture-all-lab", "-f", str(key))
        (self.root / "authorized_keys").write_text((self.root / "id_ed25519.pub").read_text())
        (self.root / "ssh_config").write_text("# empty: the lab must not read the user's ~/.ssh/config\n")
        lines = []
        for h in HOSTS:
            hk = self.root / h / "ssh_host_ed25519_key"
            hk.parent.mkdir(exist_ok=True)
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h, "-f", str(hk))
            pub = " ".join((hk.with_suffix(".pub")).read_text().split()[:2])
            self.host_keys[h] = pub
            lines.append(f"{MGMT[h]} {pub}\n")
        self.known_hosts.write_text("".join(lines))
        self.known_hosts.chmod(0o600)

    def _network(self) -> None:
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", "mgmt0", "type", "bridge")
        sh("ip", "link", "set", "mgmt0", "up")
        sh("ip", "addr", "add", "198.19.0.1/24", "dev", "mgmt0")
        for h in HOSTS:
            sh("ip", "netns", "add", h)
            sh("ip", "link", "add", f"m-{h}", "type", "veth", "peer", "name", "mgmt", "netns", h)
            sh("ip", "link", "set", f"m-{h}", "master", "mgmt0", "up")
            sh("ip", "-n", h, "link", "set", "lo", "up")
            sh("ip", "-n", h, "link", "set", "mgmt", "up")
            sh("ip", "-n", h, "addr", "add", f"{MGMT[h]}/24", "dev", "mgmt")
        self._link("client", "eth1", f"{CLIENT_IP}/24", "router", "eth1", f"{ROUTER_CLIENT_SIDE}/24")
        self._link("router", "eth2", f"{ROUTER_PROXY_SIDE}/24", "proxy", "eth1", f"{PROXY_FRONT}/24")
        self._link("proxy", "eth2", f"{PROXY_BACK}/24", "backend", "eth1", f"{BACKEND_IP}/24")
        # The client reaches the proxy through the router, and the backend directly through the
        # router and the proxy (which also routes), for scenarios without an L7 proxy in between.
        sh("ip", "-n", "client", "route", "add", "198.18.2.0/24", "via", ROUTER_CLIENT_SIDE)
        sh("ip", "-n", "client", "route", "add", "198.18.3.0/24", "via", ROUTER_CLIENT_SIDE)
        sh("ip", "-n", "router", "route", "add", "198.18.3.0/24", "via", PROXY_FRONT)
        sh("ip", "-n", "proxy", "route", "add", "198.18.1.0/24", "via", ROUTER_PROXY_SIDE)
        sh("ip", "-n", "backend", "route", "add", "198.18.1.0/24", "via", PROXY_BACK)
        for ns in ("router", "proxy"):
            sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", ns=ns)
        # The masquerading gateway between the client (its second interface) and the router.
        self._link("client", "eth2", f"{CLIENT_NAT_SIDE}/24", "nat", "eth1", f"{NAT_INSIDE}/24")
        self._link("nat", "eth2", f"{NAT_OUTSIDE}/24", "router", "eth3", f"{ROUTER_NAT_SIDE}/24")
        for net in ("198.18.2.0/24", "198.18.3.0/24"):
            sh("ip", "-n", "nat", "route", "add", net, "via", ROUTER_NAT_SIDE)
        sh("ip", "-n", "proxy", "route", "add", "198.18.5.0/24", "via", ROUTER_PROXY_SIDE)
        sh("ip", "-n", "backend", "route", "add", "198.18.5.0/24", "via", PROXY_BACK)
        sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", ns="nat")
        lo, hi = NAT_PORTS
        sh("nft", "-f", "-", ns="nat", input=(
            "table ip capture_all_lab_nat {\n"
            "  chain post {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "eth2" meta l4proto tcp masquerade to :{lo}-{hi}\n'
            "  }\n}\n"
        ))  # fmt: skip

    def via_nat(self) -> None:
        """The client reaches the proxy and the backend through the NAT gateway, from CLIENT_NAT_SIDE."""
        for net in ("198.18.2.0/24", "198.18.3.0/24"):
            sh("ip", "-n", "client", "route", "replace", net, "via", NAT_INSIDE, "src", CLIENT_NAT_SIDE)

    def direct(self) -> None:
        """The client reaches them through the router again (the lab's default)."""
        for net in ("198.18.2.0/24", "198.18.3.0/24"):
            sh("ip", "-n", "client", "route", "replace", net, "via", ROUTER_CLIENT_SIDE)

    @staticmethod
    def _link(a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
        sh("ip", "link", "add", "tmp-a", "netns", a, "type", "veth", "peer", "name", "tmp-b", "netns", b)
        sh("ip", "-n", a, "link", "set", "tmp-a", "name", a_if)
        sh("ip", "-n", b, "link", "set", "tmp-b", "name", b_if)
        for ns, ifn, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", ifn)
            sh("ip", "-n", ns, "link", "set", ifn, "up")
            # No IPv6 chatter (router solicitations, DAD) in the captures.
            sh("sysctl", "-q", "-w", f"net.ipv6.conf.{ifn}.disable_ipv6=1", ns=ns)

    def _sshd_config(self, h: str, force_command: Path | None = None) -> Path:
        cfg = self.root / h / "sshd_config"
        cfg.write_text(
            (f"ForceCommand {force_command}\n" if force_command else "")
            + f"ListenAddress {MGMT[h]}:22\n"
            f"HostKey {self.root / h / 'ssh_host_ed25519_key'}\n"
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}\n"
            "PidFile none\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel ERROR\n"
            # OpenSSH's default session and startup limits, as in production. The backend has no
            # SFTP subsystem, as hardened hosts often do: its evidence must come back all the same.
            + ("" if h == NO_SFTP else "Subsystem sftp internal-sftp\n")
        )
        return cfg

    def _spawn(self, name: str, ns: str, argv: list[str]) -> None:
        """Start a lab process in namespace ``ns``; its output goes to ROOT/NAME.log."""
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log, stderr=log, cwd=REPO)

    def start_sshd(self, h: str, *, tracefs: bool = True, force_command: str | None = None) -> None:
        """sshd for host h. `ip netns exec` gives each host a fresh /sys; with tracefs the host also
        gets the kernel's tracefs mounted there (its own mount namespace, as on a real host that
        has it), so the kernel reset witness can run; without, the witness must say it cannot.
        ``force_command``: a shell script sshd runs instead of what the client asked for (sshd's
        ForceCommand, as on restricted accounts; the client's command is in $SSH_ORIGINAL_COMMAND)."""
        script = None
        if force_command is not None:
            script = self.root / h / "force-command"
            script.write_text("#!/bin/sh\n" + force_command)
            script.chmod(0o755)
        argv = ["/usr/sbin/sshd", "-D", "-e", "-f", str(self._sshd_config(h, script))]
        (self.without_tracefs.discard if tracefs else self.without_tracefs.add)(h)
        (self.forced.add if force_command is not None else self.forced.discard)(h)
        if tracefs:
            argv = ["sh", "-c", 'mount -t tracefs nodev /sys/kernel/tracing && exec "$@"', "lab-sshd", *argv]
        self._spawn(f"sshd-{h}", h, argv)
        wait_banner(MGMT[h])

    def stop_sshd(self, h: str) -> None:
        """Stop one host's sshd (by the PID we recorded): that host becomes unreachable."""
        p = self.procs.pop(f"sshd-{h}")
        p.terminate()
        p.wait(5)

    def trace_instances(self) -> list[str]:
        """capture-all's ftrace instances in the (one, shared) kernel, seen through the lab's own
        tracefs mount."""
        root = Path("/sys/kernel/tracing/instances")
        return sorted(p.name for p in root.glob("capture-all.*")) if root.is_dir() else []

    def _sshd_all(self) -> None:
        for h in HOSTS:
            self.start_sshd(h)

    def _services(self) -> None:
        self.start_backend()
        self.start_backend(port=81, idle=1.0)
        cfg = self.root / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG)
        self._spawn("haproxy", "proxy", ["haproxy", "-db", "-f", str(cfg)])
        for port in (8080, 8081, 8082, 8083):
            self.wait_listening("proxy", port)

    def start_backend(self, port: int = 80, idle: float = 5.0) -> None:
        """The lab backend on BACKEND_IP:port (port 81 has a 1 s keep-alive idle timeout)."""
        argv = [sys.executable, "-m", "tests.lab.backend", "--listen", f"{BACKEND_IP}:{port}", "--idle", str(idle)]
        self._spawn(f"backend-{port}", "backend", argv)
        self.wait_listening("backend", port)

    def stuck_listener(self, port: int) -> None:
        """A listener on BACKEND_IP:port with the shortest queue that never accepts: a flood of
        connections overflows its listen queue (TcpExtListenOverflows). Stop it with stop()."""
        code = (
            "import socket, time; s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(({BACKEND_IP!r}, {port})); s.listen(0); time.sleep(300)"
        )
        self._spawn(f"stuck-{port}", "backend", [sys.executable, "-c", code])
        self.wait_listening("backend", port)

    def stop(self, name: str) -> None:
        """Stop a lab process we started, by the PID we recorded."""
        p = self.procs.pop(name)
        p.terminate()
        p.wait(5)

    def kill_backend(self, port: int = 80) -> None:
        """SIGKILL the backend process (by the PID we started), its connections open."""
        p = self.procs.pop(f"backend-{port}")
        p.kill()
        p.wait(5)

    def wait_listening(self, ns: str, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sh("ss", "-Hltn", f"sport = :{port}", ns=ns).strip():
                return
            time.sleep(0.02)
        raise LabError(f"nothing listening on {ns}:{port} after {timeout} s")

    def nat_inventory(self, declared: bool) -> Path:
        """The inventory for the path through the NAT gateway (see ``via_nat``): the client on its
        second interface, the router's third, and the NAT host itself only when ``declared``."""
        path = self.root / ("inventory-nat.toml" if declared else "inventory-nat-undeclared.toml")
        path.write_text(self._inventory_text(nat=declared, client_ip=CLIENT_NAT_SIDE, client_if="eth2"))
        return path

    def _write_inventory(self) -> None:
        self.inventory.write_text(self._inventory_text(nat=False, client_ip=CLIENT_IP, client_if="eth1"))

    def _inventory_text(self, *, nat: bool, client_ip: str, client_if: str) -> str:
        r = self.root
        nat_host = f"""
[[hosts]]
name = "nat"
role = "nat"
address = "{MGMT["nat"]}"
interfaces = ["eth1", "eth2"]
addresses = ["{NAT_INSIDE}", "{NAT_OUTSIDE}"]
"""
        via_nat = client_ip == CLIENT_NAT_SIDE
        router_ifs = '["eth1", "eth2", "eth3"]' if via_nat else '["eth1", "eth2"]'
        router_ips = [ROUTER_CLIENT_SIDE, ROUTER_PROXY_SIDE] + ([ROUTER_NAT_SIDE] if via_nat else [])
        return f"""# Generated by tests/lab/labnet.py for the lab in {r}
[ssh]
user = "root"
identity_file = "{r / "id_ed25519"}"
known_hosts = "{self.known_hosts}"
config_file = "{r / "ssh_config"}"
sudo = false
connect_timeout = 5

[capture]
tmpdir = "{self.remote_tmp}"

[[hosts]]
name = "client"
role = "client"
address = "{MGMT["client"]}"
interfaces = ["{client_if}"]
addresses = ["{client_ip}"]
{nat_host if nat else ""}
[[hosts]]
name = "router"
role = "router"
address = "{MGMT["router"]}"
interfaces = {router_ifs}
addresses = [{", ".join(f'"{ip}"' for ip in router_ips)}]

[[hosts]]
name = "proxy"
role = "proxy"
address = "{MGMT["proxy"]}"
interfaces = ["eth1", "eth2"]
addresses = ["{PROXY_FRONT}", "{PROXY_BACK}"]
listen = ["{PROXY_FRONT}:8080", "{PROXY_FRONT}:8081", "{PROXY_FRONT}:8082", "{PROXY_FRONT}:8083"]
upstream = ["{BACKEND_IP}:80"]
ssh = {{ sudo = true }}
logs = ["{r / "haproxy.log"}"]  # HAProxy's own log (log stdout): its lines of the window come back

[[hosts]]
name = "backend"
role = "backend"
address = "{MGMT["backend"]}"
interfaces = ["eth1"]
addresses = ["{BACKEND_IP}"]
listen = ["{BACKEND_IP}:80", "{BACKEND_IP}:81"]
"""

    # ---- reproducing resets -----------------------------------------------------------------
    def router_forges_resets(self, port: int = 8081) -> None:
        """The router answers any client data to the proxy's ``port`` with a forged RST."""
        sh(
            "nft",
            "-f",
            "-",
            ns="router",
            input=(
                "table inet capture_all_lab {\n"
                "  chain forward {\n"
                "    type filter hook forward priority 0; policy accept;\n"
                f"    ip daddr {PROXY_FRONT} tcp dport {port} tcp flags & psh == psh reject with tcp reset\n"
                "  }\n}\n"
            ),
        )

    def router_clear(self) -> None:
        sh("nft", "delete", "table", "inet", "capture_all_lab", ns="router", check=False)

    def nat_forges_resets(self, port: int = 8081) -> None:
        """The NAT gateway itself answers client data to the proxy's ``port`` with a forged RST
        (its forward hook sees the packet before its own masquerade rewrites it)."""
        sh("nft", "-f", "-", ns="nat", input=(
            "table inet capture_all_lab {\n  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"    ip daddr {PROXY_FRONT} tcp dport {port} tcp flags & psh == psh reject with tcp reset\n"
            "  }\n}\n"
        ))  # fmt: skip

    def nat_clear(self) -> None:
        sh("nft", "delete", "table", "inet", "capture_all_lab", ns="nat", check=False)

    # ---- inspection ------------------------------------------------------------------------
    def our_processes(self) -> list[tuple[int, str, str]]:
        """(pid, program, argv text) of every lab process whose argv mentions the remote temp dir."""
        needle = str(self.remote_tmp).encode()
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(needle in a for a in argv):
                text = b" ".join(argv).decode(errors="replace")
                found.append((int(pid), os.path.basename(argv[0].decode(errors="replace")), text[:300]))
        return found

    def remote_dirs(self) -> list[str]:
        return sorted(p.name for p in self.remote_tmp.iterdir())

    @staticmethod
    def run_records() -> list[str]:
        """The hosts' run locks and the runs' records (remote.commands.RUN_DIR, on the lab's /run)."""
        run = Path(RUN_DIR)
        return sorted(p.name for p in run.iterdir()) if run.is_dir() else []

    def teardown(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)
