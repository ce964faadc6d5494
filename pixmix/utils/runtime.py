"""Process-level tuning for CPU throughput. Called by the project's entry points, never on import."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest accepted mmap threshold on 64-bit systems.
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1 << 30

_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Stop glibc from returning freed tensor memory to the OS after every large free.

    torch's CPU tensors of a few MiB are malloc'ed and freed at a high rate; with glibc's defaults the
    memory goes back to the OS and every new tensor page-faults it in again, which measured 2-5x
    slower on this project's image kernels. Raising the mmap and trim thresholds keeps it in the heap
    (the price: the process keeps its peak heap size). Called before torch is imported, it also
    turns on torch's transparent-huge-page allocations. Returns whether the malloc settings took
    effect; a no-op off glibc. Safe to call more than once.
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    # torch reads this once, at its first CPU allocation: allocations of 2 MiB and more then use
    # transparent huge pages (512x fewer page faults on a fresh batch). Too late once torch is loaded.
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
            mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        )
    return _tuned


# --- how many CPUs this process may use ----------------------------------------------------------------
# torch and the BLAS libraries start one thread per core of the machine, whatever the process may use:
# with worker processes, on a shared node or in a cgroup-limited container that oversubscribes the CPU
# (measured on a 2-core machine under load: several times slower). Every command that starts processes
# or threads plans them from the CPUs it may really use.

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# OMP_NUM_THREADS as the user set it (None: unset), saved when limit_threads first overwrites it: this
# process's own limit (a share of the CPUs) must not shrink the budget that usable_cpus plans from.
_UNSAVED = "<unsaved>"
_user_omp: str | None = _UNSAVED


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and number >= 1 else None


def _cgroup_cpus(root: str = "/sys/fs/cgroup") -> int | None:
    """CPUs allowed by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), rounded up; None if
    there is no quota."""
    import math

    try:
        with open(os.path.join(root, "cpu.max")) as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as fh:
            quota_us = int(fh.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as fh:
            period_us = int(fh.read())
        return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(env: dict[str, str] | None = None, cgroup_root: str = "/sys/fs/cgroup", *,
                affinity: int | None = None) -> int:
    """The CPUs this process may really use: the smallest of its CPU affinity, its cgroup quota,
    ``SLURM_CPUS_PER_TASK`` and ``OMP_NUM_THREADS`` (each when set).

    Several ranks per node (``LOCAL_WORLD_SIZE``, set by torchrun) share the node's CPUs: the node-wide
    limits (affinity and cgroup quota, which every rank sees whole) are divided among them; the per-process
    ones (``SLURM_CPUS_PER_TASK``, ``OMP_NUM_THREADS``) are not. ``affinity``: the affinity's CPU count
    (default: this process's).
    """
    if env is None:
        env = dict(os.environ)
        if _user_omp != _UNSAVED:  # ours, not the user's: plan from the user's setting
            env.pop("OMP_NUM_THREADS", None)
            env.update({"OMP_NUM_THREADS": _user_omp} if _user_omp is not None else {})
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            affinity = os.cpu_count() or 1
    ranks = _positive_int(env.get("LOCAL_WORLD_SIZE")) or 1
    node = [n for n in (affinity, _cgroup_cpus(cgroup_root)) if n is not None]
    limits = [max(1, n // ranks) for n in node]
    limits += [n for n in (_positive_int(env.get("SLURM_CPUS_PER_TASK")),
                           _positive_int(env.get("OMP_NUM_THREADS"))) if n is not None]
    return max(1, min(limits))


def plan_workers(requested: int | None, *, cpus: int | None = None, oversubscribe: bool = False) -> tuple[int, int]:
    """``(processes, threads per process)`` so that processes x threads <= the usable CPUs.

    ``requested`` None means one process per usable CPU. More processes than CPUs only with
    ``oversubscribe`` (then each gets one thread).
    """
    budget = usable_cpus() if cpus is None else max(1, cpus)
    workers = budget if requested is None else max(1, requested)
    if not oversubscribe:
        workers = min(workers, budget)
    return workers, max(1, budget // workers)


def limit_threads(threads: int) -> Any:
    """Cap this process's torch and BLAS threads at ``threads``, and its future children's (environment).

    Returns threadpoolctl's handle of the BLAS limits (None without threadpoolctl)."""
    global _user_omp
    threads = max(1, int(threads))
    if _user_omp == _UNSAVED:
        _user_omp = os.environ.get("OMP_NUM_THREADS")
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # numpy's BLAS then keeps its own default
        return None
    return threadpool_limits(threads)


@contextmanager
def threads_limited(threads: int) -> Iterator[None]:
    """:func:`limit_threads` for the duration of a block, then the earlier settings back: a command run
    in-process (by a test, a pipeline) leaves its caller's threads and environment as they were."""
    global _user_omp
    saved, saved_user = {name: os.environ.get(name) for name in _THREAD_VARIABLES}, _user_omp
    torch_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    blas = limit_threads(threads)
    try:
        yield
    finally:
        _user_omp = saved_user
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if blas is not None:  # first: torch's OpenMP pool is one of the libraries threadpoolctl restores
            blas.restore_original_limits()
        if torch_threads is not None:
            sys.modules["torch"].set_num_threads(torch_threads)
