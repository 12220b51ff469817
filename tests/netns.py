"""Network namespaces whose links a test can cut and heal: one joined to this one by a veth pair
(:func:`make_namespace`), or several on one switch, a bridge in a namespace of its own that this
one joins too (:func:`make_switch`): hosts of a small network on one machine.

Only addresses inside the namespaces and their pairs are used (10.231.N.0/30 for a pair,
10.231.N.0/24 for a switch), and everything is removed at the end. Needs root (``ip netns``).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import uuid
from dataclasses import dataclass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def can_make_namespaces() -> bool:
    if shutil.which("ip") is None:
        return False
    probe = f"ssprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


@dataclass
class Namespace:
    name: str
    host_link: str
    host_address: str  # this side of the pair: what processes in the namespace reach us at
    address: str  # the namespace's side

    @property
    def run(self) -> tuple[str, ...]:
        """The prefix that runs a command inside the namespace."""
        return ("ip", "netns", "exec", self.name)

    def cut(self) -> None:
        """Packets between the namespace and here are dropped (the link is down), both ways."""
        _ip("link", "set", self.host_link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_link, "up")

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)


def make_namespace() -> Namespace:
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    free = [n for n in range(100, 250) if f"10.231.{n}." not in used]
    n = random.choice(free)
    tag = uuid.uuid4().hex[:6]
    ns = Namespace(f"ss{tag}", f"hss{tag}", f"10.231.{n}.1", f"10.231.{n}.2")
    try:
        _ip("netns", "add", ns.name)
        _ip("link", "add", ns.host_link, "type", "veth", "peer", "name", f"wss{tag}")
        _ip("link", "set", f"wss{tag}", "netns", ns.name)
        _ip("addr", "add", f"{ns.host_address}/30", "dev", ns.host_link)
        _ip("link", "set", ns.host_link, "up")
        _ip("-n", ns.name, "addr", "add", f"{ns.address}/30", "dev", f"wss{tag}")
        _ip("-n", ns.name, "link", "set", f"wss{tag}", "up")
        _ip("-n", ns.name, "link", "set", "lo", "up")
    except BaseException:
        ns.remove()
        raise
    return ns


@dataclass
class Host:
    """One namespace on a :class:`Switch`: its address, and the switch's end of its link."""

    name: str
    address: str
    port_link: str  # the switch's end of the host's link (in the switch's namespace)
    switch: str  # the switch's namespace

    @property
    def run(self) -> tuple[str, ...]:
        """The prefix that runs a command inside the host's namespace."""
        return ("ip", "netns", "exec", self.name)

    def cut(self) -> None:
        """The host is off the network: nothing reaches it, it reaches nothing (both ways)."""
        _ip("-n", self.switch, "link", "set", self.port_link, "down")

    def heal(self) -> None:
        _ip("-n", self.switch, "link", "set", self.port_link, "up")


@dataclass
class Switch:
    """``hosts`` on one bridge, which this namespace joins at ``address``."""

    name: str
    address: str  # this side: where the hosts reach processes of this namespace
    host_link: str
    hosts: list[Host]

    def remove(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)  # takes the links along
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)


def make_switch(hosts: int) -> Switch:
    """``hosts`` namespaces and this one on one bridge (10.231.N.1 here, .11, .12, ... there)."""
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    n = random.choice([n for n in range(100, 250) if f"10.231.{n}." not in used])
    tag = uuid.uuid4().hex[:6]
    switch = Switch(f"sw{tag}", f"10.231.{n}.1", f"hsw{tag}", [])
    try:
        _ip("netns", "add", switch.name)
        _ip("-n", switch.name, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch.name, "link", "set", "br0", "up")
        _ip("link", "add", switch.host_link, "type", "veth", "peer", "name", "up0")
        _ip("link", "set", "up0", "netns", switch.name)
        _ip("-n", switch.name, "link", "set", "up0", "master", "br0", "up")
        _ip("addr", "add", f"{switch.address}/24", "dev", switch.host_link)
        _ip("link", "set", switch.host_link, "up")
        for i in range(hosts):
            host = Host(f"h{i}{tag}", f"10.231.{n}.{11 + i}", f"p{i}", switch.name)
            switch.hosts.append(host)
            _ip("netns", "add", host.name)
            _ip("-n", switch.name, "link", "add", host.port_link, "type", "veth", "peer", "name", "eth0")
            _ip("-n", switch.name, "link", "set", "eth0", "netns", host.name)
            _ip("-n", switch.name, "link", "set", host.port_link, "master", "br0", "up")
            _ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.name, "link", "set", "eth0", "up")
            _ip("-n", host.name, "link", "set", "lo", "up")
    except BaseException:
        switch.remove()
        raise
    return switch
