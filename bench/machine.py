"""What the benchmark ran on, and how busy the whole machine was while it ran."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Layout:
    """Which CPUs the system under test gets, and which the fake upstream and the load generator share.

    On two cores, one worker gets core 0 to itself and everything else shares core 1, so the load
    generator cannot starve the gateway. `None` means no pinning; so does the role "any" (for a
    target with more workers than the server CPUs, which then shares every CPU with its load).
    """

    server: str | None
    aux: str | None

    def cpus(self, role: str) -> str | None:
        return {"server": self.server, "aux": self.aux}.get(role)

    @classmethod
    def default(cls, *, pin: bool) -> Layout:
        count = os.cpu_count() or 1
        if not pin or count < 2:
            return cls(None, None)
        return cls("0", "1" if count == 2 else f"1-{count - 1}")


def describe() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": models[0] if models else platform.processor(),
        "memory_mib": mem_kib // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": _wrk_version(),
    }


def _wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "missing"
    return out.split(" Copyright")[0].strip() or "unknown"


def cpu_times() -> dict[str, float]:
    """Seconds the whole machine has spent, summed over CPUs: in processes, and in interrupts (the loopback
    network's softirq work lands there, charged to no process)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return {"process": (user + nice + system) / _TICK, "irq": (irq + softirq) / _TICK, "steal": steal / _TICK}


def wait_quiet(*, limit: float, max_wait: float, sample: float = 1.0) -> float:
    """Wait until other work (process CPU plus hypervisor steal) stays under `limit` CPUs for one sample.

    Between cases our own processes idle, so what remains is other work (a test run, a build) that would
    otherwise be measured as the gateway's. Returns the busy fraction of the last sample; gives up after
    `max_wait` seconds and lets the caller record how busy it was.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = cpu_times()
        time.sleep(sample)
        after = cpu_times()
        busy = sum(after[k] - before[k] for k in ("process", "steal")) / sample
        if busy <= limit or time.monotonic() >= deadline:
            return busy
