"""Ray on this machine, reachable only from it.

`ray.init()` deliberately resolves "127.0.0.1" to the machine's network address so that other nodes could
join, and then its servers (GCS, raylet, object manager, agents, metrics) listen there. An embedded sweep has no
other nodes: with Ray's local-only switch set before Ray is imported, every Ray process binds the loopback
interface instead. (The switch's name, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, comes from its first use: on macOS
and Windows Ray is local-only by default.) A cluster's nodes are started by `ray start` with their own
addresses (cluster/*.yaml) and are not affected; setting the switch to 1 yourself opts out.
"""

from __future__ import annotations

import os
import sys

LOCAL_ONLY_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def bind_to_loopback() -> None:
    """Make a Ray started later by this process (and its children) listen on 127.0.0.1 only. Takes effect when
    called before `ray` is first imported."""
    if "ray" not in sys.modules:
        os.environ.setdefault(LOCAL_ONLY_SWITCH, "0")


def start_local_ray(cpus: float, gpus: float, trial_slots: int, dashboard: bool = False) -> None:
    """A Ray instance owned by this process, on the loopback interface, with `trial_slots` trial drivers."""
    bind_to_loopback()
    import ray
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER and os.environ.get(LOCAL_ONLY_SWITCH) != "1":
        raise RuntimeError(f"ray was imported before orchestrator.local_ray.bind_to_loopback(): a local Ray would "
                           f"listen on this machine's network address. Set {LOCAL_ONLY_SWITCH}=0 in the environment "
                           f"(or call bind_to_loopback() before importing ray), or =1 to allow it")
    ray.init(address="local", num_cpus=int(cpus), num_gpus=int(gpus), resources={"trial_slot": trial_slots},
             include_dashboard=dashboard, dashboard_host="127.0.0.1", configure_logging=False, log_to_driver=False)
