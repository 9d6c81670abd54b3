"""Who we log in as and how: sudo, refused sudo, no root, wrong key, a jump host; size caps."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.lab.labnet import PROXY_FRONT, Lab
from tests.lab.test_capture import FLOW_8080, host, manifest, run_cli


def inventory(lab: Lab, tmp_path: Path, old: str, new: str) -> Path:
    text = lab.inventory.read_text()
    assert old in text
    inv = tmp_path / "inv.toml"
    inv.write_text(text.replace(old, new, 1))
    return inv


def test_unprivileged_user_with_passwordless_sudo_captures(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The production setup: log in as a normal user, capture through `sudo -n`, pull the files
    back over SFTP as that user (tcpdump drops to it with -Z), clean up through sudo."""
    inv = inventory(clean_lab, tmp_path, "ssh = { sudo = true }", 'ssh = { sudo = true, user = "captest" }')
    out = tmp_path / "b"
    code, stdout, _ = run_cli(
        capsys,
        "-i",
        str(inv),
        "--flow",
        FLOW_8080,
        "-d",
        "1",
        "-o",
        str(out),
        "--hosts",
        "client,proxy",
        "--reproduce",
        f"curl -sS -m 3 http://{PROXY_FRONT}:8080/",
    )
    assert code == 0, stdout
    proxy = host(manifest(out), "proxy")
    assert proxy["status"] == "ok" and proxy["remote_dir_removed"]
    assert all(c["packets"] and c["packets"] > 0 for c in proxy["captures"])
    # The witness ran as root through sudo; its files were handed to the user for SFTP, like the pcaps.
    assert proxy["witness"]["state"] == "ran" and proxy["notes"] == [], proxy
    assert "proxy/witness/witness.trace" in proxy["witness"]["files"]
    assert clean_lab.remote_dirs() == []


def test_sudo_that_wants_a_password_is_refused_clearly(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = inventory(clean_lab, tmp_path, "ssh = { sudo = true }", 'ssh = { sudo = true, user = "nosudo" }')
    code, stdout, _ = run_cli(capsys, "-i", str(inv), "--flow", FLOW_8080, "-d", "1", "-o", str(tmp_path / "b"))
    assert code == 3
    proxy = host(manifest(tmp_path / "b"), "proxy")
    assert proxy["error_kind"] == "no_privilege" and "sudo -n refused" in proxy["error"]
    assert "password is required" in proxy["error"]
    assert host(manifest(tmp_path / "b"), "client")["status"] == "ok"


def test_non_root_without_sudo_is_refused_and_cleaned_up(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = inventory(clean_lab, tmp_path, "ssh = { sudo = true }", 'ssh = { sudo = false, user = "nosudo" }')
    code, _, _ = run_cli(capsys, "-i", str(inv), "--flow", FLOW_8080, "-d", "1", "-o", str(tmp_path / "b"))
    assert code == 3
    proxy = host(manifest(tmp_path / "b"), "proxy")
    assert proxy["error_kind"] == "no_privilege" and "needs root" in proxy["error"]
    assert clean_lab.remote_dirs() == []


def test_a_key_the_host_does_not_accept_is_auth_refused(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    inv = inventory(clean_lab, tmp_path, "ssh = { sudo = true }", f'ssh = {{ sudo = true, identity_file = "{key}" }}')
    code, stdout, _ = run_cli(capsys, "-i", str(inv), "--flow", FLOW_8080, "-d", "1", "-o", str(tmp_path / "b"))
    assert code == 3
    assert host(manifest(tmp_path / "b"), "proxy")["error_kind"] == "auth_refused"
    assert "proxy" in stdout and "authentication refused" in stdout


def test_through_a_jump_host(clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = inventory(
        clean_lab,
        tmp_path,
        'listen = ["198.18.3.10:80", "198.18.3.10:81"]\n',
        'listen = ["198.18.3.10:80"]\nssh = { jump_host = "root@198.19.0.13" }\n',
    )
    code, _, _ = run_cli(
        capsys, "-i", str(inv), "--flow", FLOW_8080, "-d", "1", "-o", str(tmp_path / "b"), "--hosts", "backend"
    )
    assert code == 0
    sshd_log = (clean_lab.root / "sshd-backend.log").read_text()
    assert "error" not in sshd_log.lower()
    # The backend saw our session come from the jump host, and excluded exactly that from its filter.
    assert "not (host 198.19.0.13 and host 198.19.0.14" in host(manifest(tmp_path / "b"), "backend")["bpf_filter"]


def test_capture_stops_itself_at_max_bytes(clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    # 40 requests over about 3 s: longer than the watchdog's one-second check below half the cap
    # (over about 1 s they could all pass between two checks, as one CI run showed).
    loop = f"for i in $(seq 40); do curl -s -m 2 http://{PROXY_FRONT}:8080/ >/dev/null; sleep 0.07; done"
    code, _, _ = run_cli(
        capsys,
        "-i",
        str(clean_lab.inventory),
        "--flow",
        FLOW_8080,
        "-d",
        "4",
        "-o",
        str(out),
        "--hosts",
        "client",
        "--max-bytes",
        "4K",
        "--reproduce",
        loop,
    )
    assert code == 0
    client = host(manifest(out), "client")
    assert client["stop_reason"] == "max-bytes"
    size = (out / "client/eth1.pcap").stat().st_size
    assert 4096 <= size < 40 * 800  # stopped well before the 40 requests' worth


def test_sessions_are_aes_gcm_unless_the_users_ssh_config_names_ciphers(clean_lab: Lab, tmp_path: Path) -> None:
    """A real sshd and the connector the CLI uses: AES-GCM is what the connection runs (a tenth of
    chacha20's cost per packet on the controller); a config's Ciphers line is what it runs then."""
    import anyio

    from orchestrator.flow import parse_flow
    from orchestrator.inventory import load_inventory
    from orchestrator.plan import build_plan
    from remote.ssh import SshConnector

    def cipher(inv_path: Path) -> str:
        inv, _ = load_inventory(inv_path)
        target = next(h for h in build_plan(parse_flow(FLOW_8080), inv).hosts if h.name == "proxy").target

        async def go() -> str:
            connector = SshConnector()
            try:
                transport = await connector.connect(target)
                got = str(transport._conn.get_extra_info("send_cipher"))
                await transport.close()
                return got
            finally:
                await connector.close()

        return anyio.run(go)

    assert cipher(clean_lab.inventory) == "aes128-gcm@openssh.com"
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n  Ciphers aes256-ctr\n")
    lab_config = f'config_file = "{clean_lab.root / "ssh_config"}"'
    inv = inventory(clean_lab, tmp_path, lab_config, f'config_file = "{config}"')
    assert cipher(inv) == "aes256-ctr"


def test_a_session_that_does_not_end_keeps_what_the_host_wrote_on_stderr(clean_lab: Lab) -> None:
    """A real sshd: a session still running when it is closed (a login stuck on a lock, here a
    line on stderr and a sleep that ignores the closed stdin) comes back after its wait with the
    host's stderr so far, which names the stall in the host's one line."""
    import anyio

    from orchestrator.flow import parse_flow
    from orchestrator.inventory import load_inventory
    from orchestrator.plan import build_plan
    from remote.commands import RemoteCommand
    from remote.ssh import SshConnector

    inv, _ = load_inventory(clean_lab.inventory)
    target = next(h for h in build_plan(parse_flow(FLOW_8080), inv).hosts if h.name == "proxy").target
    token = "2.0421"  # the sleep's argument: how the test finds it on the lab's one PID space
    line = f"echo 'pyenv: cannot rehash: waiting on a lock' >&2; exec sleep {token}"

    async def go() -> tuple[int | None, str]:
        connector = SshConnector()
        try:
            transport = await connector.connect(target)
            session = await transport.open(RemoteCommand("capture", (), line, 10))
            with anyio.fail_after(5):
                result = await session.close(wait_s=0.5)
            await transport.close()
            return result.exit_status, result.stderr
        finally:
            await connector.close()

    status, stderr = anyio.run(go)
    assert status is None
    assert stderr.splitlines() == ["pyenv: cannot rehash: waiting on a lock", "session did not end within 0.5 s"]

    def sleeping() -> bool:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes() == f"sleep\0{token}\0".encode():
                    return True
            except OSError:
                pass
        return False

    deadline = time.monotonic() + 10
    while sleeping() and time.monotonic() < deadline:  # the host's sleep ends by itself
        time.sleep(0.1)
    assert not sleeping()


def test_the_operators_agent_is_never_forwarded(
    clean_lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ssh config with `ForwardAgent yes` and an agent running on the bastion: no host of the
    run gets a socket to it (a root on any hop could sign with the operator's keys)."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline and agent.poll() is None, "ssh-agent did not start"
            time.sleep(0.05)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        cfg = tmp_path / "ssh_config"
        cfg.write_text("Host *\n  ForwardAgent yes\n")
        lab_cfg = f'config_file = "{clean_lab.root / "ssh_config"}"'
        inv = inventory(clean_lab, tmp_path, lab_cfg, f'config_file = "{cfg}"')
        out = tmp_path / "b"
        said = 'echo "agent=${SSH_AUTH_SOCK:-none}"'
        code, stdout, _ = run_cli(capsys, "-i", str(inv), "--flow", FLOW_8080, "-d", "1", "-o", str(out),
                                  "--hosts", "client", "--reproduce", said)  # fmt: skip
        assert code == 0, stdout
        assert "agent=none" in (out / "client" / "reproduce.txt").read_text()
    finally:
        agent.terminate()  # ours, by its PID
        agent.wait(10)
