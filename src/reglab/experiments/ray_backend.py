"""The study runner's tasks on a Ray cluster (``execute(..., backend="ray")``, ``reglab run
--backend ray [--address ADDR]``). Only this module imports ray, and only when it is used.

``RayPool`` stands where the local helper pool stands in ``schedule.Scheduler``: the driver (this
process) plans the groups, decides which units are done and holds each group's lock, exactly as
locally; each Ray task trains one ``fit_many`` group (``group.train_group_task``) and writes
its units into ``OUT`` itself -- every file atomically, the verified JSON last -- so a task
retried after its worker died rewrites the same files with the same bits and a unit can never be
half-written or present twice.

Resources: a task declares ``num_cpus = threads`` (``--threads``, else 1) and trains with torch
set to that many threads, under the thread rule (``reglab.threads``), as a local worker does
with its share of the cores. With ``--gpus-per-task G`` it also declares ``num_gpus = G``: Ray
packs ``1 / G`` tasks onto each GPU (0.25: four groups share a GPU) and shows each task its GPU
as ``cuda``, where its experiments train (``devices.ray_device``); without, tasks see no GPU.

Storage: ``OUT``, the experiment files and any builder code or data they name are read and
written by the tasks at the driver's paths -- each task runs in the driver's working directory,
so a relative path means the same there -- so on a cluster they must be on a filesystem every
node mounts at the same path (Ray >= 2.7 syncs no files to the head node). A task that cannot
see them fails with that message.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
from typing import Any


class RayBackendError(ValueError):
    """The Ray backend cannot run this study as asked (said before any task starts)."""


#: retries of a task whose worker process or node died (Python exceptions are not retried)
MAX_RETRIES = 3


def _where() -> str:
    import ray

    return f"{ray.util.get_node_ip_address()} pid {os.getpid()}"


def _ray_task(fn, args: tuple, cpus: int, explicit: int | None, cwd: str) -> tuple[Any, str]:
    """What a Ray worker runs: ``fn(*args)`` in the driver's working directory ``cwd`` (so that a
    relative OUT or study path means what it means to the driver), with ``cpus`` torch threads
    (the thread rule's cap) and the driver's ``--threads``; returns the result and where it ran."""
    from .worker import set_up_trainer

    try:
        os.chdir(cwd)
    except OSError:
        raise FileNotFoundError(f"{cwd}: the driver's working directory is not found on the Ray node {_where()}; "
                                "put the study folder and OUT on a filesystem every node mounts at the same "
                                "path, and run reglab from there") from None
    for a in args:
        if isinstance(a, str) and os.path.isabs(a) and not os.path.exists(a):
            raise FileNotFoundError(f"{a}: not found on the Ray node {_where()}; put the study folder and OUT on "
                                    "a filesystem every node mounts at the same path")
    set_up_trainer(cpus, explicit)
    return fn(*args), _where()


class RayPool:
    """Runs ``(fn, *args)`` tasks on Ray with ``concurrent.futures`` futures, like the helper
    pool. Without ``address`` a local Ray instance is started for the run (shut down by
    ``shutdown``); with it (``"auto"``, ``"ray://host:port"``, ``"host:port"``) the run joins that
    cluster. Where Ray is already initialized in this process, that instance is used as it is."""

    def __init__(self, address: str | None = None, cpus_per_task: int = 1, explicit: int | None = None,
                 gpus_per_task: float = 0.0):
        try:
            import ray
        except ImportError:
            raise RuntimeError("--backend ray needs Ray: pip install 'reglab[ray]'") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            ray.init(address=address or "local", log_to_driver=False, include_dashboard=False,
                     configure_logging=False)
            self._started = True
        self.cpus = int(cpus_per_task)
        self.explicit = explicit
        self._refs: dict[cf.Future, Any] = {}
        total = int(ray.cluster_resources().get("CPU", 1))
        if total < self.cpus:
            self.shutdown()
            raise RayBackendError(f"each Ray task asks for {self.cpus} CPU(s) (--threads) but the cluster has "
                                  f"{total}")
        #: tasks that fit on the cluster at once (the driver keeps one more queued)
        self.slots = max(1, total // self.cpus)
        self.gpus = float(gpus_per_task)
        if self.gpus > 0:
            gpus = float(ray.cluster_resources().get("GPU", 0))
            if gpus < self.gpus:
                self.shutdown()
                raise RayBackendError(f"each Ray task asks for {self.gpus:g} GPU(s) (--gpus-per-task) but the cluster "
                                      f"has {gpus:g}")
            self.slots = max(1, min(self.slots, int(gpus // self.gpus)))
        self._remote = ray.remote(_ray_task).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=MAX_RETRIES,
                                                     retry_exceptions=False)
        #: where each finished task ran: node address -> number of tasks
        self.where: collections.Counter[str] = collections.Counter()

    def submit(self, fn, *args) -> cf.Future:
        ref = self._remote.remote(fn, args, self.cpus, self.explicit, os.getcwd())
        out: cf.Future = cf.Future()
        self._refs[out] = ref

        def done(f: cf.Future) -> None:
            self._refs.pop(out, None)
            if out.done():  # cancelled by the driver (Ctrl-C, another task's error): nothing to hand over
                return
            try:
                result, where = f.result()
            except BaseException as e:  # noqa: BLE001 (handed to the driver's future)
                out.set_exception(e)
                return
            self.where[where.split(" pid ")[0]] += 1
            out.set_result(result)

        ref.future().add_done_callback(done)
        return out

    def interrupt(self) -> None:
        """Cancel every task not finished: a running group is interrupted (it writes nothing)."""
        for ref in list(self._refs.values()):
            try:
                self._ray.cancel(ref)
            except Exception:  # noqa: BLE001 (already finished or gone)
                pass

    def shutdown(self, wait: bool = True, cancel_futures: bool = True) -> None:
        if cancel_futures:
            self.interrupt()
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

