"""Test hosts in network namespaces: clients behind NAT and firewalls, servers behind
1:1 NAT, links that go down and come back.

Everything here is made by the test that uses it and deleted when it ends, pass or
fail: namespaces (``ip netns add``), veth pairs between them (or to the host), the
iptables rules inside them (each namespace has its own tables, so deleting the
namespace deletes its rules), and the processes started in them (ended by pid). Names
start with :data:`PREFIX` and carry the creating process's pid, so that concurrent
runs never collide and :func:`cleanup_leftovers` can remove what a crashed earlier
run left (namespaces of a pid that is gone) without touching a live run's.

Addresses come out of 10.250.0.0/16 in /30s: no real network here uses them, and
traffic goes only between the namespaces a test made (TESTING.md).

Typical use (pytest; tests/browser/conftest.py offers the ``network`` fixture, elsewhere
import it: ``from tests.netns import network_fixture  # noqa: F401``)::

    def test_x(network: Network) -> None:
        client, router = network.namespace("cli"), network.namespace("nat")
        inside = network.connect(client, router)       # client 10.250.a.b/30 <-> router
        client.add_route("default", via=inside.b_addr)
        ...
        network.link_down(client)                      # cable pulled
        network.link_up(client)                        # and back (routes restored)

The test process itself can act inside a namespace without a veth to the host:
:meth:`Namespace.call` runs a function in a thread that entered the namespace, and
:meth:`Namespace.run_coroutine` runs a coroutine on an event loop of such a thread
(every socket a thread creates belongs to the namespace the thread is in). Chromium
runs inside one through :meth:`Namespace.chromium_wrapper`, Playwright's
``executable_path`` (Playwright talks to it over a pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
import re
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from loadtest.server import call_in_netns, enter_netns

__all__ = [
    "PREFIX",
    "Link",
    "Namespace",
    "Network",
    "cleanup_leftovers",
    "network_fixture",
]

PREFIX = "sfut-"
NETNS_DIR = Path("/run/netns")
SUPERNET = ipaddress.ip_network("10.250.0.0/16")
_SUBNETS = SUPERNET.num_addresses // 4  # /30s in the supernet
_counter = itertools.count()
_lock = threading.Lock()

T = TypeVar("T")


def _run(cmd: Sequence[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _next_id() -> int:
    with _lock:
        return next(_counter)


def _end_pid(pid: int, grace: float = 3.0) -> None:
    """SIGTERM ``pid`` (and its process group when it leads one), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            # a child of ours that exited stays a zombie until reaped
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            time.sleep(0.05)


def _netns_pids(name: str) -> list[int]:
    result = _run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in result.stdout.split()]


def _delete_namespace(name: str) -> None:
    """End every process inside ``name`` (by pid), then delete it; its veths (and
    their peers, wherever they are) and its iptables rules go with it."""
    for _ in range(3):
        pids = _netns_pids(name)
        if not pids:
            break
        for pid in pids:
            _end_pid(pid)
    _run(["ip", "netns", "delete", name], check=False)


def _owner_alive(name: str) -> bool:
    match = re.match(re.escape(PREFIX) + r"(\d+)-", name)
    if match is None:
        return False
    pid = int(match.group(1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_leftovers() -> list[str]:
    """Delete the namespaces of :data:`PREFIX` whose creating process is gone (a run
    that crashed or was killed before its teardown); return their names. Host-side
    veth ends go with their peers."""
    removed = []
    result = _run(["ip", "netns", "list"], check=False)
    for line in result.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX) and not _owner_alive(name):
            _delete_namespace(name)
            removed.append(name)
    return removed


@dataclass
class Link:
    """A veth pair: ``a_dev`` with ``a_addr`` in ``a`` (None: the host), ``b_dev``
    with ``b_addr`` in ``b``, on the /30 ``subnet``."""

    a: Namespace | None
    b: Namespace
    a_dev: str
    b_dev: str
    a_addr: str
    b_addr: str
    subnet: ipaddress.IPv4Network


@dataclass
class Namespace:
    """One network namespace (a test host). ``name`` is its ``ip netns`` name;
    ``devices`` its veth ends in creation order."""

    name: str
    role: str
    devices: list[str] = field(default_factory=list)
    routes: list[tuple[str, str, str | None]] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def prefix(self) -> list[str]:
        """The command prefix that runs a program in here."""
        return ["ip", "netns", "exec", self.name]

    def run(self, *cmd: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the namespace and wait for it."""
        return _run([*self.prefix(), *cmd], check=check, timeout=timeout)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``cmd`` in the namespace, in a process group of its own; it is ended
        by its pid when the network is torn down (or earlier by the caller)."""
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen([*self.prefix(), *cmd], **kwargs)
        self.processes.append(proc)
        return proc

    def iptables(self, *args: str) -> None:
        """``iptables ARGS`` in the namespace's own tables (gone with the namespace)."""
        self.run("iptables", "-w", *args)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def enable_forwarding(self) -> None:
        """Route between this namespace's interfaces (a router)."""
        self.sysctl("net.ipv4.ip_forward", "1")

    def add_route(self, dest: str, via: str, dev: str | None = None) -> None:
        """``ip route replace DEST via VIA``; remembered so :meth:`Network.link_up`
        can put it back (the kernel drops routes of a link that goes down)."""
        self.routes.append((dest, via, dev))
        self._apply_route(dest, via, dev)

    def _apply_route(self, dest: str, via: str, dev: str | None) -> None:
        self.run("ip", "route", "replace", dest, "via", via, *(["dev", dev] if dev else []))

    def masquerade(self, out_dev: str) -> None:
        """Source NAT (MASQUERADE) of everything that leaves through ``out_dev``:
        what is behind this router shares its address there, as behind a home NAT."""
        self.enable_forwarding()
        self.iptables("-t", "nat", "-A", "POSTROUTING", "-o", out_dev, "-j", "MASQUERADE")

    def one_to_one_nat(self, public: str, private: str, private_dev: str) -> None:
        """A cloud's 1:1 NAT on this router: what comes for ``public`` (an address of
        this router) goes on to ``private`` (DNAT, ports kept), and what ``private``
        sends out of any interface but ``private_dev`` (its own side) leaves from
        ``public`` (SNAT)."""
        self.enable_forwarding()
        self.iptables("-t", "nat", "-A", "PREROUTING", "-d", public, "-j", "DNAT", "--to-destination", private)
        self.iptables("-t", "nat", "-A", "POSTROUTING", "-s", private, "!", "-o", private_dev,
                      "-j", "SNAT", "--to-source", public)

    def pids(self) -> list[int]:
        """Every process inside the namespace."""
        return _netns_pids(self.name)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = 60.0) -> T:
        """``fn(*args)`` in a new thread that entered this namespace (its sockets are
        in here); its result, or its exception raised again."""
        return call_in_netns(self.name, fn, *args, timeout=timeout)

    async def run_coroutine(self, factory: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
        """Await ``factory()`` on a new event loop in a thread inside this namespace
        (every socket it opens is in here) without blocking the caller's loop; it is
        cancelled after ``timeout`` seconds. Objects it creates belong to that loop:
        return plain values."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        caller = asyncio.get_running_loop()

        def finish(result: T | None, error: BaseException | None) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)  # type: ignore[arg-type]

        def body() -> None:
            async def bounded() -> T:
                return await asyncio.wait_for(factory(), timeout)

            try:
                result = asyncio.run(bounded())
            except BaseException as exc:  # handed to the caller
                caller.call_soon_threadsafe(finish, None, exc)
            else:
                caller.call_soon_threadsafe(finish, result, None)

        def target() -> None:
            try:
                enter_netns(self.name)
            except BaseException as exc:
                caller.call_soon_threadsafe(finish, None, exc)
                return
            body()

        thread = threading.Thread(target=target, name=f"netns-{self.name}", daemon=True)
        thread.start()
        try:
            return await done
        finally:
            await asyncio.to_thread(thread.join, timeout + 10)

    def chromium_wrapper(self, directory: Path, chromium: str = "/usr/bin/chromium") -> tuple[Path, Path]:
        """A script to use as Playwright's ``executable_path``: it writes its pid
        (Chromium's, after ``exec``) to a file and runs Chromium in this namespace.
        Returns (script, pid file); end the browser with :func:`end_browser`."""
        script = directory / f"chromium-{self.name}.sh"
        pid_file = directory / f"chromium-{self.name}.pid"
        script.write_text(f'#!/bin/sh\necho $$ > "{pid_file}"\nexec ip netns exec {self.name} {chromium} "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return script, pid_file


def end_browser(pid_file: Path) -> None:
    """End the Chromium a :meth:`Namespace.chromium_wrapper` started, by its pid (its
    process group: Playwright starts it as a group leader)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    _end_pid(pid)


class Network:
    """The namespaces and links of one test; :meth:`close` deletes them all."""

    def __init__(self) -> None:
        self.id = f"{os.getpid()}-{_next_id()}"
        self.namespaces: list[Namespace] = []
        self.links: list[Link] = []
        self._host_devices: list[str] = []

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespace(self, role: str) -> Namespace:
        """A new namespace named ``sfut-<pid>-<n>-<role>`` with its loopback up."""
        if not re.fullmatch(r"[a-z0-9]{1,12}", role):
            raise ValueError(f"role {role!r}: 1-12 of a-z 0-9")
        ns = Namespace(f"{PREFIX}{self.id}-{role}", role)
        _run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def _subnet(self) -> ipaddress.IPv4Network:
        """A /30 of 10.250.0.0/16 that no interface of the host has (only host links
        need that; namespaces have their own routing tables)."""
        used = _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
        start = (os.getpid() * 131 + _next_id() * 7) % _SUBNETS
        for i in range(_SUBNETS):
            index = (start + i) % _SUBNETS
            subnet = ipaddress.ip_network((int(SUPERNET.network_address) + 4 * index, 30))
            hosts = [str(h) for h in subnet.hosts()]
            if not any(f" {h}/" in used for h in hosts):
                return subnet
        raise RuntimeError("no free /30 in 10.250.0.0/16")

    def connect(self, a: Namespace | None, b: Namespace) -> Link:
        """A veth pair between ``a`` (None: the host) and ``b``, both ends up, with the
        two addresses of a fresh /30 (``a`` gets the first)."""
        subnet = self._subnet()
        a_addr, b_addr = (str(h) for h in subnet.hosts())
        index = len(self.links)
        b_dev = f"v{index}{a.role[:6] if a else 'host'}"  # in b: named after the far side
        if a is None:
            a_dev = f"sf{os.getpid() % 100000}x{_next_id() % 1000}"[:15]  # unique on the host
        else:
            a_dev = f"v{index}{b.role[:6]}"
        _run(["ip", "link", "add", a_dev, *(["netns", a.name] if a else []), "type", "veth",
              "peer", "name", b_dev, "netns", b.name])
        if a is None:
            self._host_devices.append(a_dev)
        link = Link(a, b, a_dev, b_dev, a_addr, b_addr, subnet)
        self.links.append(link)
        for ns, dev, addr in ((a, a_dev, a_addr), (b, b_dev, b_addr)):
            prefix = ns.prefix() if ns else []
            _run([*prefix, "ip", "addr", "add", f"{addr}/30", "dev", dev])
            _run([*prefix, "ip", "link", "set", dev, "up"])
            if ns is not None:
                ns.devices.append(dev)
        return link

    def link_down(self, ns: Namespace, dev: str | None = None) -> None:
        """Take ``ns``'s veth ``dev`` down (default: all of its veths), as if its cable
        were pulled: nothing goes in or out there, its peer loses carrier too."""
        for device in [dev] if dev else ns.devices:
            ns.run("ip", "link", "set", device, "down")

    def link_up(self, ns: Namespace, dev: str | None = None) -> None:
        """Bring the veth(s) back and put back the routes :meth:`Namespace.add_route`
        made (the kernel dropped them with the link)."""
        for device in [dev] if dev else ns.devices:
            ns.run("ip", "link", "set", device, "up")
        for dest, via, route_dev in ns.routes:
            deadline = time.monotonic() + 5
            while True:  # the connected route comes back with the carrier
                try:
                    ns._apply_route(dest, via, route_dev)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def close(self) -> None:
        """End every process started in the namespaces, delete them (their veths and
        iptables rules go with them) and any host veth end that is left."""
        for ns in self.namespaces:
            for proc in ns.processes:
                if proc.poll() is None:
                    _end_pid(proc.pid)
                with contextlib.suppress(Exception):
                    proc.wait(timeout=5)
        for ns in reversed(self.namespaces):
            _delete_namespace(ns.name)
        for dev in self._host_devices:
            _run(["ip", "link", "delete", dev], check=False)
        self.namespaces.clear()


def require_root() -> None:
    """Fail (not skip) when namespaces cannot be made here."""
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root")
    for tool in ("ip", "iptables"):
        if _run(["which", tool], check=False).returncode != 0:
            pytest.fail(f"{tool} is missing (.ci/run installs iproute2 and iptables)")


@pytest.fixture(name="network")
def network_fixture() -> Iterator[Network]:
    """A :class:`Network` for one test, deleted at teardown whatever happened; first
    removes what crashed earlier runs left."""
    require_root()
    cleanup_leftovers()
    with Network() as net:
        yield net
