"""Watch mode's pieces that need no host: the ring's split, the trigger's line, the window's
words, the index over incidents, and the CLI's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import incidents
from orchestrator.cli import main
from orchestrator.options import WatchOptions
from remote import commands
from remote.parse import parse_rst_line


@pytest.mark.parametrize(("ring_bytes", "ifaces", "snaplen"), [(4 << 20, 2, 2000), (4 << 20, 1, 262144),
                                                              (100 << 20, 2, 262144), (1 << 30, 3, 65535)])  # fmt: skip
def test_a_ring_stays_within_its_bytes_counting_one_packet_over_per_file(ring_bytes: int, ifaces: int,
                                                                         snaplen: int) -> None:  # fmt: skip
    files, mb = WatchOptions(ring_bytes=ring_bytes).ring(ifaces, snaplen)
    assert 2 <= files <= 10 and mb >= 1
    assert ifaces * files * (mb * 1_000_000 + snaplen) <= ring_bytes
    commands.capture("/tmp", ["eth0"], min_free_kb=1, limit_s=1, max_packets=1, max_bytes=1, snaplen=snaplen,
                     keep_s=1, witness_kb=0, ports=(), wait_s=1, sudo=False, ring=(files, mb))  # fmt: skip


def test_the_trigger_line_gives_the_host_time_of_the_rst() -> None:
    line = "@@rst 1796176166.606040486 IP 198.18.3.10.80 > 198.18.1.10.49476: Flags [R.], seq 1, length 0"
    assert parse_rst_line(line) == 1796176166_606040486
    assert parse_rst_line("@@rst 1796176166.606040 IP ...") == 1796176166_606040000  # microseconds
    for bad in ("@@rst", "@@rst x.1 IP", "@@rst 1.1234567890 IP", "@@armed", "@@rst 12.-3"):
        assert parse_rst_line(bad) is None


def test_a_window_reaches_the_host_as_two_plain_integers() -> None:
    assert commands.window_words(None) == ("0", "0")
    assert commands.window_words((5, 9)) == ("5", "9")
    with pytest.raises(commands.UnsafeValue):
        commands.window_words((9, 5))
    with pytest.raises(commands.UnsafeValue):
        commands.capture("/tmp", ["eth0"], min_free_kb=1, limit_s=1, max_packets=1, max_bytes=1, snaplen=1,
                         keep_s=1, witness_kb=0, ports=(), wait_s=1, sudo=False, ring=(1, 1))  # fmt: skip


def _report(host: str | None, kind: str, cause: str) -> dict[str, object]:
    r = {"id": "R1", "origin": {"kind": kind, "host": host, "between": None}, "cause": cause, "tuple": {}}
    return {"first_reset": "R1", "resets": [r], "verdict": f"{host} did it"}


def test_the_index_sums_up_first_resets_across_incidents(tmp_path: Path) -> None:
    trig = {"kind": "rst", "host": "client", "at_ns": 1}
    rows = [incidents.row(f"00{i}-x", trig, _report("lb-1", "host", "proxy_policy"), 0, []) for i in range(4)]
    rows.append(incidents.row("005-x", trig, _report(None, "unknown", "unknown"), 3, ["lb-1"]))
    said = "first resets: 4 of 5: host lb-1, cause proxy_policy; 1 of 5: unknown (lb-1 failed)"
    assert incidents.summary(rows) == said
    armed = {"flow": "a->b:1", "started_utc": "t0", "ended_utc": "t1", "ended": "--count reached"}
    incidents.write(tmp_path, rows, armed)
    doc = json.loads((tmp_path / "incidents.json").read_text())
    assert doc["summary"] == incidents.summary(rows) and len(doc["incidents"]) == 5
    assert "[005-x](005-x/report.md) | rst at client | unknown" in (tmp_path / "incidents.md").read_text()
    assert incidents.summary([]) == "no incident"


@pytest.mark.parametrize(("argv", "said"), [
    (["--ring-bytes", "1M"], "--ring-bytes: at least 4M"),
    (["--max-armed", "5", "--before", "10"], "--max-armed: must be longer than --before + --after"),
    (["--max-armed", "4x"], "is not a time like 90s"),
    (["--count", "0"], "must be greater than 0"),
    (["--trigger-on-log", "nosuch:/var/log/x.log:reset"], "--trigger-on-log: nosuch is not a host of this run"),
    (["--trigger-on-log", "c:/var/log/x.log"], "HOST:SOURCE:REGEX"),
    (["--trigger-on-log", "c:journal=ng inx;reboot:reset"], "journal=UNIT with a systemd unit name"),
    (["--trigger-on-log", "c:relative.log:reset"], "must be an absolute plain path"),
    (["--trigger-on-log", "c:/var/log/$(reboot).log:reset"], "must be an absolute plain path"),
])  # fmt: skip
def test_watch_refuses_bad_options_in_one_line(argv: list[str], said: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    inv = tmp_path / "inv.toml"
    inv.write_text('[[hosts]]\nname = "c"\nrole = "client"\naddress = "127.0.0.1"\ninterfaces = ["eth0"]\n'
                   'addresses = ["198.18.1.10"]\n')
    code = main(["watch", "-i", str(inv), "-f", "198.18.1.10->198.18.3.10:80", "-o", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
