"""Guards for a server that runs any SQL it is sent: which Host headers it answers, and the
warning printed when it listens beyond loopback with no user name required.

DNS rebinding lets a web page reach a loopback server under a name the attacker controls; the
Host header then carries that name. So a request is answered only when its Host names the bind
address, or (bound to loopback) localhost, 127.0.0.1 or [::1], with or without a port; bound to
every interface (0.0.0.0, ::) also the machine's host name and any address literal, which no
rebinding can produce; plus names the operator allows.
"""

from __future__ import annotations

import ipaddress
import re
import socket

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, user: str | None) -> str | None:
    """A loud warning when the server listens beyond loopback with no user name required."""
    if user is not None or is_loopback(host):
        return None
    bar = "!" * 78
    return (
        f"{bar}\n"
        f"WARNING: databend-local listens on {host or 'every interface'} with no --user.\n"
        "Anyone who can reach this address can run any SQL: read and drop every table and use\n"
        "every connection's cloud credentials. Bind to 127.0.0.1, or set --user and --password\n"
        "(env DATABEND_LOCAL_USER / DATABEND_LOCAL_PASSWORD).\n"
        f"{bar}"
    )


def host_name(header: str) -> str | None:
    """The host part of a Host header, lower-cased, without port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        rest = header[end + 1 :]
        if end < 0 or (rest and not re.fullmatch(r":\d{1,5}", rest)):
            return None
        return header[1:end]
    name, colon, port = header.partition(":")
    if colon and not re.fullmatch(r"\d{1,5}", port):
        return None
    return name or None


class HostGuard:
    """Decides whether a request's Host header names this server."""

    def __init__(self, bind: str, allowed: tuple[str, ...] = ()) -> None:
        self.wildcard = bind in WILDCARD_ADDRESSES
        names = {bind.lower().strip("[]"), *(h.lower() for h in allowed)}
        if self.wildcard or is_loopback(bind):
            names |= LOOPBACK_NAMES
        if self.wildcard:
            names.add(socket.gethostname().lower())
        self.names = frozenset(names)

    def accepts(self, header: str) -> bool:
        host = host_name(header)
        if host is None:
            return False
        if host in self.names:
            return True
        if self.wildcard:
            try:
                ipaddress.ip_address(host)
                return True
            except ValueError:
                return False
        return False
