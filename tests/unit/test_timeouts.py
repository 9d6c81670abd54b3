"""Idle timeouts read from configs as the projects document them, and the chain's inequality."""

from __future__ import annotations

from analysis.timeouts import Timeout, haproxy_keepalive, nginx_timeouts, pairs

HAPROXY = """# capture-all file: /etc/haproxy/haproxy.cfg
global
  log stdout format raw local0
defaults
  mode http
  timeout http-request 10s
  timeout client 30s
frontend fe_api
  bind 10.20.4.18:443 ssl crt /etc/ssl/x.pem
  timeout http-keep-alive 4s
frontend fe_plain
  bind :80
defaults
  timeout http-request 1500ms
frontend fe_late
  bind :8080
"""


def test_haproxy_keep_alive_own_inherited_and_its_http_request_fallback() -> None:
    assert haproxy_keepalive(HAPROXY, 443) == (4000, "/etc/haproxy/haproxy.cfg:9 (timeout http-keep-alive 4s)")
    # No http-keep-alive anywhere: HAProxy keeps idle client connections for http-request.
    assert haproxy_keepalive(HAPROXY, 80) == (10000, "/etc/haproxy/haproxy.cfg:5 (timeout http-request 10s)")
    # A later defaults section is what the sections after it inherit.
    assert haproxy_keepalive(HAPROXY, 8080) == (1500, "/etc/haproxy/haproxy.cfg:13 (timeout http-request 1500ms)")
    assert haproxy_keepalive(HAPROXY, 9999) is None


def test_nginx_keepalive_client_side_upstream_and_defaults() -> None:
    conf = """# configuration file /etc/nginx/nginx.conf:
http {
    keepalive_timeout 65;
    upstream api {
        server 10.30.7.55:8443;
        keepalive 16;
        keepalive_timeout 30s;
    }
}
"""
    t = nginx_timeouts(conf)
    assert t["keepalive_timeout"] == (65000, "/etc/nginx/nginx.conf:2 (keepalive_timeout 65;)")
    assert t["upstream keepalive_timeout"] == (30000, "/etc/nginx/nginx.conf:6 (keepalive_timeout 30s;)")
    assert nginx_timeouts("http {\n}\n")["keepalive_timeout"] == (75000, "nginx's default keepalive_timeout (75s)")


def test_the_chain_names_each_pair_out_of_order() -> None:
    pool = Timeout("app", "connection pool idle timeout", 90_000, "inventory")
    lb_close = Timeout("lb", "client-side keep-alive", 75_000, "nginx")
    lb_reuse = Timeout("lb", "upstream keep-alive", 60_000, "nginx")
    api = Timeout("api", "keep-alive idle timeout", 5_000, "inventory")
    found = pairs([(pool, None), (lb_reuse, lb_close), (None, api)])
    assert [(p.reuser.host, p.closer.host, p.ok) for p in found] == [("app", "lb", False), ("lb", "api", False)]
    assert found[0].text().startswith("app connection pool idle timeout 90 s (inventory) >= lb client-side")
    fixed = pairs([(Timeout("app", "pool", 30_000, "i"), None), (None, lb_close)])
    assert [p.ok for p in fixed] == [True]


def _hops(conntrack_s: int | None = 3600) -> list:  # type: ignore[type-arg]
    from analysis.timeouts import HopInput

    sysctl = f"net/netfilter/nf_conntrack_tcp_timeout_established {conntrack_s}\n" if conntrack_s else ""
    hap = "frontend fe\n  bind :443\n  timeout http-keep-alive 2s\n"
    return [
        HopInput("app", "client", "5s"),
        HopInput("fw", "firewall", None, {"sysctl": sysctl}),
        HopInput("lb", "proxy", None, {"haproxy": "# capture-all file: /etc/haproxy/haproxy.cfg\n" + hap}),
        HopInput("api", "backend", "60s"),
    ]


def test_chain_pairs_hops_in_path_order_and_the_pool_against_conntrack() -> None:
    from analysis.timeouts import chain

    c = chain(_hops(conntrack_s=4), 443)
    texts = [p.text() for p in c.pairs]
    want = ("app connection pool idle timeout 5 s (inventory idle_timeout 5s) >= lb client-side keep-alive (HAProxy) "
            "2 s (/etc/haproxy/haproxy.cfg:3 (timeout http-keep-alive 2s))")
    assert texts[0].startswith(want)
    # The firewall forgets an idle connection after 4 s: the pool's 5 s outlives it too.
    ct = c.pairs[-1]
    assert (ct.closer.host, ct.closer.what, ct.closer.ms, ct.ok) == ("fw", "conntrack established timeout", 4000, False)
    assert ct.closer.source == "sysctl net.netfilter.nf_conntrack_tcp_timeout_established"
    assert "lb: " not in " ".join(c.notes)  # lb's value was read
    # No nf_conntrack there: a note, no pair.
    quiet = chain(_hops(conntrack_s=None), 443)
    assert len(quiet.pairs) == 1 and "fw: no conntrack established timeout" in " ".join(quiet.notes)


def test_a_reuse_is_explained_only_inside_the_violating_window() -> None:
    from analysis.timeouts import Pair, Timeout, explains

    bad = Pair(Timeout("a", "pool", 5000, "inv"), Timeout("b", "keep-alive", 2000, "cfg"), ok=False)
    assert explains(bad, 3_000_000_000) and explains(bad, 2_000_000_000)
    assert not explains(bad, 1_999_999_999)  # the closer still held it: something else reset it
    assert not explains(bad, 5_000_000_000)  # the pool itself would have dropped it by then
    good = Pair(Timeout("a", "pool", 1000, "inv"), Timeout("b", "keep-alive", 2000, "cfg"), ok=True)
    assert not explains(good, 1_500_000_000)


def test_a_forged_reset_is_the_forgers_idle_expiry_only_by_its_own_conntrack_timeout() -> None:
    """Issue 30.5: a middlebox's reset of a reuse after a silence is that box's idle expiry where its
    own conntrack established timeout (read on it) is shorter than the silence and the client's
    pool longer; never another box's, never an unknown box's, never outside the window."""
    from analysis.correlate import Reset
    from analysis.evidence import Cause, Fact, Origin
    from analysis.idlechain import link
    from analysis.timeouts import Chain, Pair, Timeout

    pool = Timeout("client", "connection pool idle timeout", 10_000, "inventory idle_timeout 10s")
    ct = Timeout("nat", "conntrack established timeout", 3_000, "sysctl net.netfilter.x")
    c = Chain([Pair(pool, ct, ok=False)], [pool, ct], [])

    def forged(by: str | None, idle_s: float | None) -> Reset:
        return Reset("R1", [], origin_kind=Origin.MIDDLEBOX, origin_host=by, cause=Cause.MIDDLEBOX,
                     idle_ns=None if idle_s is None else int(idle_s * 1e9))  # fmt: skip

    r = forged("nat", 4.0)
    out = link([r], c)
    assert r.cause == Cause.IDLE_EXPIRY and out["explains"] == [{"reset_id": "R1", "pair": 0, "idle_ns": 4 * 10**9}]
    said = next(e for e in r.evidence if e.kind == Fact.CAUSE)
    assert said.text.startswith("nat forgot this connection after 3 s idle (conntrack established timeout, sysctl")
    assert "client still kept it (connection pool idle timeout 10 s, inventory idle_timeout 10s)" in said.text
    for other in (forged("router", 4.0), forged(None, 4.0), forged("nat", 2.0), forged("nat", 11.0),
                  forged("nat", None)):  # fmt: skip
        link([other], c)
        assert other.cause == Cause.MIDDLEBOX and other.evidence == [], (other.origin_host, other.idle_ns)
