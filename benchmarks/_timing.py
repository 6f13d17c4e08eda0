"""Timing helpers for benchmarks: interleaved repetitions, medians, ratios inside one run."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued device work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = ("wall", "cpu")


def interleaved_medians(
    fns: dict[str, Callable[[], object]], device: torch.device, reps: int, warmup: int = 2, clock: str = "wall"
) -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin so machine noise hits all alike.

    The order alternates between repetitions (forward, then reversed) so no function always runs first.
    ``clock="cpu"`` times this process's CPU seconds instead of wall seconds: on a shared CPU machine with one
    torch thread, it is insensitive to other processes taking the core (CPU devices only).
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}: choose one of {CLOCKS}")
    if clock == "cpu" and device.type != "cpu":
        raise ValueError("clock='cpu' times host CPU work only; use clock='wall' on an accelerator")
    now = time.process_time if clock == "cpu" else time.perf_counter
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for rep in range(reps):
        for k, fn in items if rep % 2 == 0 else items[::-1]:
            sync(device)
            t0 = now()
            fn()
            sync(device)
            times[k].append(now() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> str:
    """A one-line description of the machine the numbers come from."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu} x{torch.get_num_threads()} threads, torch {torch.__version__}"
