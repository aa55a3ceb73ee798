"""A guard against network connections, for the test run and every Python subprocess it starts.

The library must never open a network connection (no downloads of weights or datasets, no
torch-geometric fetch of a public dataset). ``install()`` adds an audit hook (PEP 578) that refuses
``socket.connect``/``sendto`` to anything but loopback and AF_UNIX, raising ``ConnectionRefusedError``
and appending the attempt to ``$DOMAINFM_NETGUARD_LOG`` so the test session can fail even when the
code under test swallowed the error. ``tests/conftest.py`` installs it in the pytest process and
puts this folder first on ``PYTHONPATH``, whose ``sitecustomize.py`` installs it in subprocesses.
"""
from __future__ import annotations

import ipaddress
import os
import sys

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}


def is_local(address: object) -> bool:
    if isinstance(address, (str, bytes)) or address is None:  # AF_UNIX path or abstract socket
        return True
    if isinstance(address, tuple) and address:
        host = address[0]
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        host = str(host).split("%", 1)[0]
        if host.lower() in LOCAL_NAMES:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False  # a host name that is not loopback: refuse rather than resolve it
        return ip.is_loopback or ip.is_unspecified or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)
    return True  # other families (netlink...) never leave the machine


def _hook(event: str, args: tuple) -> None:
    if event not in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        return
    address = args[1] if len(args) > 1 else None
    if is_local(address):
        return
    log = os.environ.get("DOMAINFM_NETGUARD_LOG")
    if log:
        try:
            with open(log, "a") as fh:
                fh.write(f"pid {os.getpid()} {' '.join(sys.argv)[:200]!r}: {event} to {address!r}\n")
        except OSError:
            pass
    raise ConnectionRefusedError(f"domainfm test guard: network connection to {address!r} refused (tests and the library must stay offline)")


_installed = False


def install() -> None:
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
