"""The namespace helpers of tests/netns.py do what other tests rely on: a routed path
through a router namespace, a link that goes down and comes back with its routes, and
the removal of what a crashed run left (and only that)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading

from tests.netns import PREFIX, Namespace, Network, cleanup_leftovers, network_fixture  # noqa: F401  (`network`)


def _listen(ns: Namespace, address: str) -> tuple[socket.socket, int]:
    """A TCP listener on ``address`` inside ``ns`` (created by a thread in there)."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((address, 0))
        s.listen(8)
        return s

    sock = ns.call(make)
    threading.Thread(target=_accept_all, args=(sock,), daemon=True).start()
    return sock, sock.getsockname()[1]


def _accept_all(sock: socket.socket) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        conn.close()


def _reaches(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1.0).close()
        return True
    except OSError:
        return False


def test_link_down_cuts_a_namespace_off_and_link_up_restores_its_routes(network: Network) -> None:
    cli, router, srv = network.namespace("cli"), network.namespace("rtr"), network.namespace("srv")
    inside, outside = network.connect(router, cli), network.connect(router, srv)
    cli.add_route("default", via=inside.a_addr)
    srv.add_route("default", via=outside.a_addr)
    router.masquerade(outside.a_dev)
    listener, port = _listen(srv, outside.b_addr)
    try:
        assert cli.call(_reaches, outside.b_addr, port)  # routed through the NAT router
        network.link_down(cli)
        assert not cli.call(_reaches, outside.b_addr, port)
        assert "default" not in cli.run("ip", "route").stdout  # the kernel dropped it with the link
        network.link_up(cli)
        assert "default via" in cli.run("ip", "route").stdout
        assert cli.call(_reaches, outside.b_addr, port)
    finally:
        listener.close()


def test_cleanup_removes_only_the_namespaces_of_dead_runs(network: Network) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale, live = f"{PREFIX}{dead.pid}-0-stale", f"{PREFIX}{os.getpid()}-999-live"
    try:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "add", name], check=True)
        removed = cleanup_leftovers()
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert stale in removed and stale not in names
        assert live not in removed and live in names
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
