"""``capture-all init``: an inventory written from what the user already has.

SSH details come from their OpenSSH client config (through asyncssh's own reader: Host and Match
blocks, ProxyJump chains) or from an Ansible inventory (``ansible-inventory --list`` JSON, an INI
file, or a YAML one where PyYAML is installed). With ``--probe`` each host's interfaces and
addresses come from ``ip -j addr`` over SSH (read-only, no privilege). What could not be
determined is marked ``FILL IN`` in a comment; the file is checked by the inventory's own loader
before it is written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.inventory import NAME_RE

ROLES = ("client", "proxy", "backend", "router", "nat", "firewall", "other")
EXIT_OK, EXIT_USAGE, EXIT_PARTIAL = 0, 2, 3


def init_parser() -> argparse.ArgumentParser:
    from orchestrator.cli import _parser

    p = _parser(
        "capture-all init",
        "Write a commented inventory for the hosts you name, SSH details filled in from your ~/.ssh/config "
        "(or --ssh-config) or from an Ansible inventory. Name each host as NAME or NAME=ROLE (ROLE one of "
        f"{', '.join(ROLES)}); with --ansible, NAME may be a group, and no NAME means every host. With --probe, "
        "each host's interfaces and data-plane addresses are read over SSH (`ip -j addr`: read-only, no sudo). "
        "What could not be determined is marked FILL IN.",
        (
            "capture-all init app-1=client lb-1=proxy api-1=backend -o inv.toml --probe",
            "capture-all init --ansible inventory/prod.ini lb=proxy -o inv.toml",
            "ansible-inventory -i prod.yml --list > hosts.json && capture-all init --ansible hosts.json",
            "capture-all init --example -o inv.toml          # the documented example inventory",
        ),
        (
            (0, "written"),
            (2, "bad input: an unknown host or group, an unreadable config, the output exists (one line)"),
            (3, "written, but --probe could not read some hosts (marked FILL IN)"),
        ),
    )
    p.add_argument("hosts", nargs="*", metavar="NAME[=ROLE]", help="ssh config Host names, Ansible hosts or groups")
    p.add_argument("--ssh-config", metavar="FILE", help="OpenSSH client config to read (default ~/.ssh/config)")
    p.add_argument("--ansible", metavar="FILE", help="Ansible inventory: ansible-inventory --list JSON, INI, or YAML")
    p.add_argument("--probe", action="store_true", help="read each host's interfaces and addresses over SSH")
    p.add_argument("--accept-new-host-keys", action="store_true", help="with --probe: trust and record new keys")
    p.add_argument("-o", "--out", type=Path, help="write here (default: print it)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--example", action="store_true", help="write the documented example inventory instead")
    return p


@dataclass
class Found:
    """One host as init knows it, and where each value came from."""

    name: str
    role: str = "other"
    address: str = ""
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    jump: str | None = None
    sudo: bool | None = None
    source: str = ""
    interfaces: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- OpenSSH client config ------------------------------------------------------------------------


def _ssh_config(path: str | None, host: str) -> Any:
    from remote.errors import RemoteError
    from remote.sshconfig import config_paths, read_config
    from remote.transport import SshTarget

    files = config_paths(SshTarget(name=host, host=host, config_files=(path,) if path else ()))
    if path and not os.access(files[0], os.R_OK):
        raise UsageError(f"--ssh-config {path}: cannot read it")
    try:
        return read_config(files, host)
    except RemoteError as exc:
        raise UsageError(exc.message) from None


def _hop(config_path: str | None, hop: str) -> str:
    """One ProxyJump hop ([user@]alias[:port]) as capture-all's jump_host takes it: the alias kept
    (the config applies to it at connect time, as for ssh), its User and Port from the config
    written out (capture-all would otherwise log in to it as the target's user)."""
    user, _, rest = hop.rpartition("@")
    alias, _, port = rest.partition(":")
    cfg = _ssh_config(config_path, alias)
    user = user or str(cfg.get("User") or "")
    port = port or str(cfg.get("Port") or "")
    return f"{user + '@' if user else ''}{alias}{':' + port if port and port != '22' else ''}"


def from_ssh_config(f: Found, name: str, config_path: str | None) -> None:
    """The Host entry ``name``: its name is the address, as for `ssh name` (the config's HostName,
    known_hosts files, algorithms apply at connect time); user, port, key and jumps written out."""
    cfg = _ssh_config(config_path, name)
    hostname = cfg.get("Hostname")
    f.address = name
    f.source = f"your ssh config's Host {name} (HostName {hostname})" if hostname else (
        "FILL IN: no HostName for it in your ssh config")  # fmt: skip
    f.user = str(cfg.get("User")) if cfg.get("User") else None
    f.port = int(str(cfg.get("Port"))) if cfg.get("Port") else None
    ids = cfg.get("IdentityFile") or []
    if ids:
        f.identity_file = str(ids[0])
        if len(ids) > 1:
            f.notes.append(f"your config offers {len(ids)} keys; capture-all offers the first (and your agent's)")
    jump = cfg.get("ProxyJump")
    if jump and str(jump).lower() != "none":
        f.jump = ",".join(_hop(config_path, h) for h in str(jump).split(","))
    if cfg.get("ProxyCommand"):
        f.notes.append("your config reaches it with a ProxyCommand, which capture-all does not run: set jump_host")


# ---- Ansible inventories ----------------------------------------------------------------------------


@dataclass
class Ansible:
    hostvars: dict[str, dict[str, Any]]
    groups: dict[str, list[str]]  # group -> its hosts, children's included


def _expand(pattern: str) -> list[str]:
    """Ansible's host ranges: web[01:03] -> web01, web02, web03 (numeric and letter ranges)."""
    m = re.search(r"\[([0-9a-z]+):([0-9a-z]+)\]", pattern)
    if not m:
        return [pattern]
    a, b = m.group(1), m.group(2)
    if a.isdigit() and b.isdigit():
        items = [str(i).zfill(len(a)) for i in range(int(a), int(b) + 1)]
    else:
        items = [chr(c) for c in range(ord(a), ord(b) + 1)]
    return [x for i in items for x in _expand(pattern[: m.start()] + i + pattern[m.end() :])]


def _closure(direct: dict[str, list[str]], children: dict[str, list[str]]) -> dict[str, list[str]]:
    def hosts(g: str, seen: set[str]) -> list[str]:
        if g in seen:
            return []
        seen.add(g)
        out = list(direct.get(g, []))
        for c in children.get(g, []):
            out += hosts(c, seen)
        return list(dict.fromkeys(out))

    return {g: hosts(g, set()) for g in set(direct) | set(children)}


def _merge_vars(groups: dict[str, list[str]], gvars: dict[str, dict[str, Any]], hvars: dict[str, dict[str, Any]],
                children: dict[str, list[str]]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Group vars (parents first, ``all`` first of all), then the host's own: Ansible's precedence."""
    depth: dict[str, int] = {}

    def d(g: str, seen: frozenset[str] = frozenset()) -> int:
        if g not in depth:
            parents = [p for p, cs in children.items() if g in cs and p not in seen]
            depth[g] = 1 + max((d(p, seen | {g}) for p in parents), default=0)
        return depth[g]

    out: dict[str, dict[str, Any]] = {}
    all_hosts = list(dict.fromkeys([h for hs in groups.values() for h in hs] + list(hvars)))
    for h in all_hosts:
        merged: dict[str, Any] = dict(gvars.get("all", {}))
        for g in sorted((g for g, hs in groups.items() if h in hs and g != "all"), key=d):
            merged.update(gvars.get(g, {}))
        merged.update(hvars.get(h, {}))
        out[h] = merged
    return out


def _ini_value(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _ini_pairs(words: str) -> dict[str, Any]:
    import shlex

    out = {}
    for w in shlex.split(words, comments=False):
        k, sep, v = w.partition("=")
        if sep:
            out[k] = _ini_value(v)
    return out


def parse_ini(text: str) -> Ansible:
    direct: dict[str, list[str]] = {"ungrouped": []}
    children: dict[str, list[str]] = {}
    gvars: dict[str, dict[str, Any]] = {}
    hvars: dict[str, dict[str, Any]] = {}
    group, kind = "ungrouped", "hosts"
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[([^\]:]+)(?::(vars|children))?\]", line)
        if m:
            group, kind = m.group(1), m.group(2) or "hosts"
            if kind == "hosts":
                direct.setdefault(group, [])
            elif kind == "children":
                children.setdefault(group, [])
            continue
        if kind == "vars":
            k, _, v = line.partition("=")
            gvars.setdefault(group, {})[k.strip()] = _ini_value(v)
        elif kind == "children":
            children.setdefault(group, []).append(line.split()[0])
        else:
            name, _, rest = line.partition(" ")
            for h in _expand(name):
                direct.setdefault(group, []).append(h)
                hvars.setdefault(h, {}).update(_ini_pairs(rest))
    children.setdefault("all", []).extend(g for g in set(direct) | set(children) if g != "all")
    groups = _closure(direct, children)
    return Ansible(_merge_vars(groups, gvars, hvars, children), groups)


def _yaml_group(name: str, node: dict[str, Any] | None, direct: dict[str, list[str]], children: dict[str, list[str]],
                gvars: dict[str, dict[str, Any]], hvars: dict[str, dict[str, Any]]) -> None:  # fmt: skip
    node = node or {}
    for pattern, hv in (node.get("hosts") or {}).items():
        for h in _expand(str(pattern)):
            direct.setdefault(name, []).append(h)
            hvars.setdefault(h, {}).update(hv or {})
    gvars.setdefault(name, {}).update(node.get("vars") or {})
    for child, cnode in (node.get("children") or {}).items():
        children.setdefault(name, []).append(child)
        _yaml_group(child, cnode, direct, children, gvars, hvars)


def parse_yaml(text: str, path: str) -> Ansible:
    try:
        import yaml
    except ImportError:
        raise UsageError(
            f"--ansible {path}: a YAML inventory needs PyYAML (pip install 'capture-all[yaml]'), or give "
            f"`ansible-inventory -i {path} --list` output (JSON) instead"
        ) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"--ansible {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--ansible {path}: not an Ansible inventory (a mapping of groups)")
    direct: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}
    gvars: dict[str, dict[str, Any]] = {}
    hvars: dict[str, dict[str, Any]] = {}
    for g, node in data.items():
        _yaml_group(str(g), node, direct, children, gvars, hvars)
    groups = _closure(direct, children)
    return Ansible(_merge_vars(groups, gvars, hvars, children), groups)


def parse_list_json(data: dict[str, Any]) -> Ansible:
    """``ansible-inventory --list``: groups with hosts and children, every host's vars in _meta."""
    hostvars = dict((data.get("_meta") or {}).get("hostvars") or {})
    direct = {g: list(v.get("hosts") or []) for g, v in data.items() if g != "_meta" and isinstance(v, dict)}
    children = {g: list(v.get("children") or []) for g, v in data.items() if g != "_meta" and isinstance(v, dict)}
    groups = _closure(direct, children)
    for hs in groups.values():
        for h in hs:
            hostvars.setdefault(h, {})
    return Ansible(hostvars, groups)


def load_ansible(path: str) -> Ansible:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--ansible {path}: cannot read it ({exc})") from None
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            return parse_list_json(json.loads(text))
        except (ValueError, AttributeError) as exc:
            raise UsageError(f"--ansible {path}: not ansible-inventory --list JSON ({exc})") from None
    if path.endswith((".yml", ".yaml")) or re.match(r"^(---|[A-Za-z0-9_-]+:\s*$)", stripped, re.M):
        return parse_yaml(text, path)
    return parse_ini(text)


_JUMP_RE = re.compile(r"(?:-J\s*|ProxyJump[= ])(\S+)")


def from_ansible(f: Found, v: dict[str, Any], path: str) -> None:
    f.address = str(v.get("ansible_host") or v.get("ansible_ssh_host") or f.name)
    f.source = f"from Ansible inventory {path}" + ("" if v.get("ansible_host") else " (its name: no ansible_host)")
    user = v.get("ansible_user") or v.get("ansible_ssh_user")
    f.user = str(user) if user else None
    port = v.get("ansible_port") or v.get("ansible_ssh_port")
    f.port = int(port) if port else None
    key = v.get("ansible_ssh_private_key_file") or v.get("ansible_private_key_file")
    f.identity_file = str(key) if key else None
    args = " ".join(str(v.get(k) or "") for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    m = _JUMP_RE.search(args)
    if m:
        f.jump = m.group(1).strip("'\"")
    elif "ProxyCommand" in args:
        f.notes.append("Ansible reaches it with a ProxyCommand, which capture-all does not run: set jump_host")
    become = str(v.get("ansible_become", "")).lower()
    if become in ("true", "yes", "1"):
        f.sudo = True


# ---- --probe -----------------------------------------------------------------------------------------


def parse_ip_addr(text: str) -> tuple[list[str], list[str]]:
    """``ip -j addr``: (interfaces that are up, not loopback, with a global address; those addresses)."""
    try:
        links = json.loads(text)
    except ValueError:
        return [], []
    ifaces, addrs = [], []
    for link in links if isinstance(links, list) else []:
        if not isinstance(link, dict) or "LOOPBACK" in (link.get("flags") or []):
            continue
        if "UP" not in (link.get("flags") or []):
            continue
        mine = [a.get("local") for a in link.get("addr_info") or [] if a.get("scope") == "global" and a.get("local")]
        if mine:
            ifaces.append(str(link.get("ifname")))
            addrs += [str(a) for a in mine]
    return ifaces, addrs


async def probe(found: list[Found], ssh_config: str | None, accept_new: bool) -> None:
    import anyio

    from orchestrator.plan import _jumps
    from remote import commands
    from remote.errors import RemoteError
    from remote.ssh import SshConnector
    from remote.transport import SshTarget

    connector = SshConnector()

    async def one(f: Found) -> None:
        target = SshTarget(
            name=f.name, host=f.address, port=f.port or 22, user=f.user,
            identity_files=(f.identity_file,) if f.identity_file else (),
            config_files=(ssh_config,) if ssh_config else (), jumps=_jumps(f.jump), connect_timeout=10.0,
            accept_new_host_key=accept_new,
        )  # fmt: skip
        try:
            with anyio.fail_after(30):
                t = await connector.connect(target)
                try:
                    res = await t.run(commands.ip_addresses())
                finally:
                    await t.close()
        except RemoteError as exc:
            f.notes.append(f"--probe: {exc.message}")
            return
        except TimeoutError:
            f.notes.append("--probe: no answer within 30 s")
            return
        ifaces, addrs = parse_ip_addr(res.stdout)
        if not ifaces:
            f.notes.append(f"--probe: `ip -j addr` gave no usable interface (exit {res.exit_status})")
        f.interfaces, f.addresses = ifaces, addrs

    try:
        async with anyio.create_task_group() as tg:
            for f in found:
                tg.start_soon(one, f)
    finally:
        await connector.close()


# ---- the file ------------------------------------------------------------------------------------------


def _q(v: object) -> str:
    return json.dumps(str(v))  # a TOML basic string (ASCII, JSON's escapes)


def _list(items: list[str]) -> str:
    return "[" + ", ".join(_q(x) for x in items) + "]"


def render(found: list[Found], *, ssh_config: str | None, sources: str) -> str:
    out = [
        f"# capture-all inventory, written by `capture-all init` from {sources}.",
        "# Check every FILL IN, then: capture-all plan -i THIS_FILE -f 'CLIENT->SERVER:PORT'",
        "# (what would run where, contacting nobody). The keys are explained in the example inventory:",
        "# capture-all init --example",
        "",
        "[ssh]",
        "# Host keys are verified against the known_hosts files your ssh config names (UserKnownHostsFile,",
        "# GlobalKnownHostsFile), OpenSSH's defaults otherwise; set known_hosts to name one file instead.",
    ]
    if ssh_config:
        out.append(f"config_file = {_q(Path(ssh_config).expanduser().resolve())}")
    out += ["connect_timeout = 10", ""]
    for f in found:
        out += ["[[hosts]]", f"name = {_q(f.name)}"]
        role_note = "" if f.role != "other" else "  # FILL IN: client | proxy | backend | router | nat | firewall"
        out.append(f"role = {_q(f.role)}{role_note}")
        out.append(f"address = {_q(f.address)}  # {f.source}")
        if f.interfaces:
            out.append(f"interfaces = {_list(f.interfaces)}  # from ip -j addr: keep those the flow crosses")
            out.append(f"addresses = {_list(f.addresses)}  # from ip -j addr: its data-plane addresses")
        else:
            out.append('interfaces = ["any"]  # FILL IN the interfaces the flow crosses (or re-run with --probe)')
            out.append("# addresses = []  # FILL IN its data-plane addresses: without them it captures every leg")
        if f.role in ("proxy", "backend", "nat"):
            out.append('# listen = ["ADDR:PORT"]  # FILL IN what it serves (a proxy\'s VIP, a backend\'s port)')
        if f.role in ("proxy", "nat"):
            out.append('# upstream = ["ADDR:PORT"]  # FILL IN where it connects onward: each becomes a leg')
        ssh = []
        if f.user:
            ssh.append(f"user = {_q(f.user)}")
        if f.port and f.port != 22:
            ssh.append(f"port = {f.port}")
        if f.identity_file:
            ssh.append(f"identity_file = {_q(f.identity_file)}")
        if f.jump:
            ssh.append(f"jump_host = {_q(f.jump)}")
        sudo = f.sudo if f.sudo is not None else f.user != "root"
        ssh.append(f"sudo = {'true' if sudo else 'false'}")
        why = "" if f.user else "  # user: your ssh config's, or your name; sudo = false if that is root"
        out.append("ssh = { " + ", ".join(ssh) + " }" + why)
        out += [f"# note: {n}" for n in f.notes]
        out.append("")
    return "\n".join(out)


def _name(text: str) -> str:
    if NAME_RE.match(text):
        return text
    fixed = re.sub(r"[^A-Za-z0-9._-]", "-", text).strip("-.")[:63] or "host"
    return fixed


def gather(args: argparse.Namespace) -> list[Found]:
    wanted: list[tuple[str, str]] = []
    for word in args.hosts:
        name, _, role = word.partition("=")
        if role and role not in ROLES:
            raise UsageError(f"{word}: role must be one of {', '.join(ROLES)}")
        if not name:
            raise UsageError(f"{word!r}: NAME[=ROLE]")
        wanted.append((name, role))
    found: list[Found] = []
    if args.ansible:
        inv = load_ansible(args.ansible)
        if not wanted:
            wanted = [(h, "") for h in inv.groups.get("all", list(inv.hostvars))]
        for name, role in wanted:
            members = [name] if name in inv.hostvars else inv.groups.get(name)
            if not members:
                raise UsageError(f"{name}: neither a host nor a group of {args.ansible}")
            for h in members:
                f = Found(_name(h), role or "other")
                from_ansible(f, inv.hostvars.get(h, {}), args.ansible)
                found.append(f)
    else:
        if not wanted:
            raise UsageError("init: name the hosts (NAME or NAME=ROLE: Host entries of your ssh config), or --ansible")
        for name, role in wanted:
            f = Found(_name(name), role or "other")
            from_ssh_config(f, name, args.ssh_config)
            found.append(f)
    names = [f.name for f in found]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"init: {', '.join(dup)} named twice")
    return found


def init_command(args: argparse.Namespace) -> int:
    from orchestrator.inventory import load_inventory

    if args.out is not None and args.out.exists() and not args.force:
        raise UsageError(f"{args.out} exists (--force to overwrite)")
    if args.example:
        from importlib.resources import files

        text = files("orchestrator").joinpath("inventory.example.toml").read_text()
        code = EXIT_OK
    else:
        found = gather(args)
        code = EXIT_OK
        if args.probe:
            import anyio

            anyio.run(probe, found, args.ssh_config, args.accept_new_host_keys, backend="asyncio")
            for f in found:
                if not f.interfaces:
                    code = EXIT_PARTIAL
                    why = next((n for n in f.notes if n.startswith("--probe")), "--probe: not read")
                    print(f"capture-all: {f.name}: {why}", file=sys.stderr)
        sources = f"Ansible inventory {args.ansible}" if args.ansible else f"ssh config {args.ssh_config or '~/.ssh/config'}"  # noqa: E501
        text = render(found, ssh_config=args.ssh_config, sources=sources + (" and ip -j addr" if args.probe else ""))
    tmp = (args.out or Path(".")).with_name(f".init-{os.getpid()}.toml") if args.out else None
    if tmp is None:
        import tempfile

        fd, name = tempfile.mkstemp(suffix=".toml")
        os.close(fd)
        tmp = Path(name)
    try:
        tmp.write_text(text)
        load_inventory(tmp)  # what we write is an inventory capture-all accepts
        if args.out is not None:
            os.replace(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)
    if args.out is None:
        sys.stdout.write(text)
    else:
        todo = text.count("FILL IN")
        print(f"wrote {args.out}" + (f": {todo} FILL IN to check" if todo else ""), file=sys.stderr)
        print(f"next: capture-all plan -i {args.out} -f 'CLIENT->SERVER:PORT'", file=sys.stderr)
    return code
