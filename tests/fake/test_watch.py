"""Watch mode's controller over the fake transport: which trigger fires, how its time crosses to
every host's clock, and what each host is told to keep."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.options import WatchOptions
from orchestrator.run import WINDOW_MARGIN_NS
from remote.errors import ConnectionLost
from remote.fake import FakeHost
from remote.transport import CommandResult
from tests.fake.test_fanout import go, hosts

pytestmark = pytest.mark.anyio

S = 10**9


def windows(fakes: dict[str, FakeHost]) -> dict[str, tuple[int, int]]:
    """What each host was told to keep: its "finish FROM TO"."""
    out = {}
    for name, f in fakes.items():
        (said,) = [x for x in f.said if x.startswith("finish")]
        _, a, b = said.split()
        out[name] = (int(a), int(b))
    return out


async def test_the_first_rst_at_any_host_sets_every_hosts_window_on_its_own_clock(tmp_path: Path) -> None:
    fakes = hosts()
    fakes["proxy"].clock_offset_ns = 7 * S  # the proxy's clock runs 7 s ahead of the controller's
    fakes["backend"].clock_offset_ns = -3 * S
    # The proxy's trigger capture saw an RST 0.5 s ago by its own clock.
    rst_host_ns = time.time_ns() + 7 * S - S // 2
    fakes["proxy"].rst_line = f"{rst_host_ns // S}.{rst_host_ns % S:09d} IP 10.1.0.2.443 > 10.1.0.1.5000: Flags [R]"
    w = WatchOptions(before=4.0, after=0.2, max_armed=30)
    result, recs = await go(tmp_path, fakes, duration=30, watch=w)
    trig = result.trigger
    assert trig is not None and (trig.kind, trig.host, trig.host_ns) == ("rst", "proxy", rst_host_ns)
    # On the controller's clock within the probes' uncertainty (here: microseconds).
    assert abs(trig.at_ns - (rst_host_ns - 7 * S)) < 50_000_000
    offsets = {"client": 0, "proxy": 7 * S, "backend": -3 * S}
    for name, (a, b) in windows(fakes).items():
        at = trig.at_ns + offsets[name]
        assert at - 4 * S - WINDOW_MARGIN_NS - 50_000_000 < a < at - 4 * S - WINDOW_MARGIN_NS + 50_000_000, name
        assert at + WINDOW_MARGIN_NS < b < at + S // 5 + WINDOW_MARGIN_NS + 50_000_000, name
        assert recs[name].window is not None and recs[name].window.from_ns == a
        assert recs[name].status == "ok" and recs[name].stop_reason == "watch window"
    # Only the first trigger counts: a second host's RST afterwards changes nothing.
    assert result.interrupted is False


async def test_a_host_whose_trigger_fails_is_a_note_and_the_others_still_trigger(tmp_path: Path) -> None:
    fakes = hosts()
    fakes["client"].answers["trigger"] = ConnectionLost("client", "channel closed")
    fakes["backend"].rst_line = "1.5 IP 10.2.0.3.8080 > 10.1.0.2.4000: Flags [R.]"
    result, recs = await go(tmp_path, fakes, duration=30, watch=WatchOptions(before=1, after=0.1, max_armed=30))
    assert result.trigger is not None and result.trigger.host == "backend"
    # Its time (1.5 s after the epoch) is no time of this arming: the line's arrival stands in.
    assert result.trigger.note and abs(result.trigger.at_ns - time.time_ns()) < 5 * S
    assert recs["client"].status == "ok" and any("its RST trigger failed" in n for n in recs["client"].notes)
    assert set(windows(fakes)) == {"client", "proxy", "backend"}


async def test_no_reset_while_armed_keeps_nothing(tmp_path: Path) -> None:
    fakes = hosts()
    fakes["proxy"].answers["trigger"] = CommandResult(None, 14, "@@fail no_dir gone\n", "")  # type: ignore[arg-type]
    result, _ = await go(tmp_path, fakes, duration=0.5, watch=WatchOptions(before=0.1, after=0.1, max_armed=0.5))
    assert result.trigger is not None and result.trigger.kind == "max-armed"
    assert set(windows(fakes).values()) == {(1, 1)}  # no file overlaps it: nothing is pulled


async def test_a_lost_trigger_session_is_re_established_and_the_gap_reported(tmp_path: Path) -> None:
    from remote.fake import Conversation, trigger_dialogue

    fakes = hosts()
    fakes["proxy"].rst_line = f"{time.time_ns() // S}.000000000 IP 10.1.0.2.443 > 10.1.0.1.5000: Flags [R]"
    tries: list[int] = []

    def flaky(host: FakeHost, cmd: object) -> Conversation:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionLost(host.name, "connection closed by the host")
        return (yield from trigger_dialogue(host, cmd))  # type: ignore[arg-type]

    fakes["proxy"].dialogues["trigger"] = flaky
    result, recs = await go(tmp_path, fakes, duration=30, watch=WatchOptions(before=1, after=0.1, max_armed=30))
    assert len(tries) == 2 and [c.phase for c in fakes["proxy"].log].count("trigger") == 2
    assert result.trigger is not None and result.trigger.host == "proxy"  # its trigger came after all
    assert any("re-established" in n and "not seen live" in n for n in recs["proxy"].notes), recs["proxy"].notes
    assert recs["proxy"].status == "ok"
