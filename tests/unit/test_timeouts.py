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
