"""A network namespace joined to this one by a veth pair, whose link a test can cut and heal.

Only addresses inside the namespace and its pair (10.231.N.1 here, 10.231.N.2 there) are used,
and everything is removed at the end. Needs root (``ip netns``).
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
