"""Pods without a cluster: network namespaces, each with its own address on one
bridge (as pods have on a node), for running segments as Kubernetes would.

Needs root and iproute2 (`ip`). Everything made is removed on the way out,
including after a failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PodNetwork:
    """`host`: the bridge's address (where the target listens, as a Service would);
    `pods[i]`: (namespace name, its address)."""

    host: str
    pods: list[tuple[str, str]]

    def exec_prefix(self, i: int) -> list[str]:
        """Run a command inside pod i's namespace."""
        return ["ip", "netns", "exec", self.pods[i][0]]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _free_subnet() -> ipaddress.IPv4Network:
    used = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], check=True, capture_output=True, text=True
    ).stdout
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.213.{random.randrange(1, 255)}.0/24")
        if f" {net.network_address + 1}/" not in used and str(net)[:-5] not in used:
            return net
    raise AssertionError("no free 10.213.x.0/24 subnet for the pod network")


@contextlib.contextmanager
def pod_network(count: int) -> Iterator[PodNetwork]:
    """A bridge and `count` namespaces linked to it by veth pairs."""
    if os.geteuid() != 0:
        raise AssertionError("network namespaces need root (CI runs as root)")
    tag = f"{os.getpid() % 100000}{random.randrange(100)}"
    net = _free_subnet()
    bridge = f"blbr{tag}"[:15]
    host = str(net.network_address + 1)
    namespaces: list[str] = []
    made_bridge = False
    try:
        _ip("link", "add", bridge, "type", "bridge")
        made_bridge = True
        _ip("addr", "add", f"{host}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        pods = []
        for i in range(count):
            ns = f"ballista-{tag}-{i}"
            outside, inside = f"blh{tag}{i}"[:15], f"bln{tag}{i}"[:15]
            _ip("netns", "add", ns)
            namespaces.append(ns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "master", bridge, "up")
            address = str(net.network_address + 10 + i)
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            pods.append((ns, address))
        yield PodNetwork(host, pods)
    finally:
        # A namespace takes its end of the veth pair, and so the pair, with it.
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        if made_bridge:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)
