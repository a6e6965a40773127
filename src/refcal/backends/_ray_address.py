"""``--ray-address``: what it may be, and a bounded check that a cluster answers there before ``ray.init``
(Ray alone retries an absent GCS for ever, with a warning every ~35 s)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import BackendError, InputError


def parse_address(address: str) -> tuple[str, int] | None:
    """``--ray-address``: None for ``auto``, else ``(host, port)`` of ``HOST:PORT`` (``ray://`` allowed).

    Raises
    ------
    InputError
        Not ``auto`` nor ``HOST:PORT`` with a port in 1..65535.
    """
    text = str(address).strip()
    if text == "auto":
        return None
    hint = "pass auto, HOST:PORT of a running Ray cluster (e.g. 10.0.0.5:6379), or leave it out for a private instance"
    if not text:
        raise InputError(f"--ray-address is empty; {hint}")
    bare = text.removeprefix("ray://")
    host, sep, port = bare.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 \
            or not all(c.isalnum() or c in ".-_:" for c in host):
        raise InputError(f"--ray-address {text!r} is not a Ray address; {hint}")
    return host, int(port)


def cluster_address(address: str, *, timeout: float = 5.0) -> None:
    """Before ``ray.init``: a cluster must answer at ``address`` within ``timeout`` seconds (Ray itself
    retries an absent GCS for ever). ``auto`` is resolved as Ray does: ``$RAY_ADDRESS``, else the
    address the last ``ray start`` on this machine wrote to ``<tmp>/ray/ray_current_cluster``."""
    import socket

    hostport = parse_address(address)
    shown = address
    if hostport is None:
        found = os.environ.get("RAY_ADDRESS", "").strip()
        if not found or found == "auto":
            marker = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"
            try:
                found = marker.read_text(encoding="utf-8").strip()
            except OSError:
                found = ""
        if not found:
            raise BackendError("--ray-address auto found no running Ray cluster on this machine; start one with "
                               "`ray start --head`, pass its HOST:PORT, or leave --ray-address out for a private "
                               "instance")
        hostport, shown = parse_address(found), f"auto ({found})"
        if hostport is None:
            return
    try:
        with socket.create_connection(hostport, timeout=timeout):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or type(exc).__name__
        raise BackendError(f"no Ray cluster answers at --ray-address {shown} ({why} after at most {timeout:g} s); "
                           "start it with `ray start --head --port PORT`, check the address, or leave "
                           "--ray-address out for a private instance") from None


__all__ = ["parse_address", "cluster_address"]
