"""Ray on this machine, reachable only from it.

`ray.init()` deliberately resolves "127.0.0.1" to the machine's network address so that other nodes could
join, and then its servers (GCS, raylet, object manager, agents, metrics) listen there. An embedded sweep has no
other nodes: with Ray's local-only switch set before Ray is imported, every Ray process binds the loopback
interface instead. (The switch's name, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, comes from its first use: on macOS
and Windows Ray is local-only by default.) A cluster's nodes are started by `ray start` with their own
addresses (cluster/*.yaml) and are not affected; setting the switch to 1 yourself opts out.

A driver killed with SIGKILL takes its GCS and raylet with it (Ray fate-shares them with the process that started
them), but Ray's per-node agents (ray::DashboardAgent, ray::RuntimeEnvAgent) can hang on their way out, reporting
the dead raylet to the dead GCS. Every such agent and worker descends from its node's raylet; a "ray::" process
with no running raylet among its ancestors is stopped, by its process id, before the next local Ray starts.
"""

from __future__ import annotations

import os
import signal
import sys

import psutil

LOCAL_ONLY_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def bind_to_loopback() -> None:
    """Make a Ray started later by this process (and its children) listen on 127.0.0.1 only. Takes effect when
    called before `ray` is first imported."""
    if "ray" not in sys.modules:
        os.environ.setdefault(LOCAL_ONLY_SWITCH, "0")


def orphaned_ray_processes() -> list[psutil.Process]:
    """This user's Ray processes ("ray::..." agents, workers and their forks) with no running raylet above them."""
    me, orphans = psutil.Process().username(), []
    for process in psutil.process_iter(["username", "name"]):
        try:
            if process.info["username"] != me or not (process.info["name"] or "").startswith("ray::"):
                continue
            if not any(ancestor.name() == "raylet" and ancestor.status() != psutil.STATUS_ZOMBIE
                       for ancestor in process.parents()):
                orphans.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return orphans


def stop_orphaned_ray_processes() -> list[str]:
    """SIGKILL the Ray processes left behind by a killed driver; returns 'name (pid)' of each one stopped."""
    stopped = []
    for process in orphaned_ray_processes():
        try:
            name = process.name()
            process.send_signal(signal.SIGKILL)
            stopped.append(f"{name} ({process.pid})")
        except psutil.NoSuchProcess:
            continue
    return stopped


def start_local_ray(cpus: float, gpus: float, trial_slots: int, dashboard: bool = False) -> list[str]:
    """A Ray instance owned by this process, on the loopback interface, with `trial_slots` trial drivers. Returns
    the Ray processes of an earlier, killed driver that it stopped first ('name (pid)')."""
    stopped = stop_orphaned_ray_processes()
    bind_to_loopback()
    import ray
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER and os.environ.get(LOCAL_ONLY_SWITCH) != "1":
        raise RuntimeError(f"ray was imported before orchestrator.local_ray.bind_to_loopback(): a local Ray would "
                           f"listen on this machine's network address. Set {LOCAL_ONLY_SWITCH}=0 in the environment "
                           f"(or call bind_to_loopback() before importing ray), or =1 to allow it")
    # Ray starts idle task workers for the first driver, one per CPU, to be ready for tasks; a sweep runs actors
    # only (trials, Train workers), which Ray starts processes of their own for, so those workers would only take
    # CPU while the sweep starts and memory and wake-ups while it runs.
    ray.init(address="local", num_cpus=int(cpus), num_gpus=int(gpus), resources={"trial_slot": trial_slots},
             include_dashboard=dashboard, dashboard_host="127.0.0.1", configure_logging=False, log_to_driver=False,
             _system_config={"prestart_worker_first_driver": False})
    return stopped
