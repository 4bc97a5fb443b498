"""Ray for this project: a local cluster that listens on 127.0.0.1 only, or a connection to an existing one.

Whoever reaches a Ray cluster's ports can run code on it (by Ray's design), so a cluster the project starts itself
must not be reachable from the network. ``ray.init(_node_ip_address="127.0.0.1")`` is not enough: Ray turns a
loopback address into the machine's address, and its gRPC servers then listen on every interface. Ray has one
switch for a cluster of this machine alone, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its default on macOS and
Windows): every Ray process then uses 127.0.0.1. What remains is Ray Serve's inter-deployment gRPC server in each
replica, which binds ``[::]`` whatever the node's address (:func:`keep_serve_replica_on_loopback`). On top of
that: no dashboard unless asked, no usage stats, and Ray's token authentication where the installed Ray has it
(``RAY_AUTH_MODE=token``; a token is made in ``~/.ray/auth_token`` if there is none).

A cluster joined with an address (``auto``, ``ray://head:10001``, ``head:6379``) is used as it is: it must sit on a
trusted network (see the README).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

LOCAL = (None, "", "local")
"""``address`` values that mean: start a cluster here."""
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def init_ray(address: str | None = None, *, dashboard: bool = False, **options: Any) -> bool:
    """Connect to the cluster at ``address``, or start one on this machine bound to 127.0.0.1 only.

    Args:
        address: ``None``/``"local"``: a new local cluster; anything else: an existing cluster (``ray.init``'s
            ``address``). If Ray is already initialised in this process, that cluster is used.
        dashboard: Start Ray's dashboard (on 127.0.0.1) with a local cluster.
        **options: More ``ray.init`` arguments (``num_cpus``, ``object_store_memory``, ``_temp_dir``...).

    Returns:
        ``True`` when this call started a local cluster (the caller shuts it down with ``ray.shutdown()``).
    """
    import ray

    if ray.is_initialized():
        return False
    options.setdefault("log_to_driver", False)
    if address not in LOCAL:
        ray.init(address=address, **options)
        return False
    _single_machine()
    _token_auth()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(include_dashboard=dashboard, dashboard_host="127.0.0.1", **options)
    return True


def _single_machine() -> None:
    """Every Ray process on 127.0.0.1: for the processes Ray starts (they read the variable) and for this one
    (which read it when Ray was imported)."""
    os.environ[SINGLE_MACHINE_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _token_auth() -> None:
    """Ray's token authentication, where the installed Ray has it, unless the user chose a mode: a token is made
    (Ray's own generator, in ``~/.ray/auth_token``) if there is none, and this process and the ones Ray starts use
    it. Ray >= 2.59 does this by default for a new local cluster; here it does not depend on the version's
    default, and says nothing when it is on."""
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None:
        if mode != "token":
            logger.warning("%s=%s: the local Ray cluster runs without token authentication", AUTH_MODE_ENV, mode)
        return
    try:
        from ray._private.authentication import authentication_token_setup as setup
    except ImportError:  # a Ray without token authentication
        return
    if not setup.AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        setup.generate_and_save_token()
    setup._enable_token_auth()  # sets RAY_AUTH_MODE=token for this process and its children


def keep_serve_replica_on_loopback() -> None:
    """In a Serve replica of a cluster on 127.0.0.1: bind Serve's inter-deployment gRPC server to 127.0.0.1
    instead of ``[::]`` (Ray Serve has no setting for it). Does nothing on a node with a routable address, or
    where this Ray version binds it differently."""
    import ray

    if not _is_loopback(ray.util.get_node_ip_address()):
        return
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    add_port = getattr(replica, "add_port_to_grpc_server", None)
    if add_port is None or getattr(add_port, "loopback_only", False):
        return

    def add_port_on_loopback(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.removeprefix("[::]:")
        return add_port(server, address)

    add_port_on_loopback.loopback_only = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port_on_loopback


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
