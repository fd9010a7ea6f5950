"""`--profile`: sample the target's workers with py-spy during each measured case and summarise the hot spots.

py-spy is a development tool, not a dependency: `.venv/bin/pip install py-spy`. Sampling costs the
profiled process a little, so a profiled run's numbers are not the ones to publish.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.procs import BenchError, pinned

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def start(pid: int, *, out: Path, seconds: float, cpus: str | None) -> subprocess.Popen[bytes]:
    argv = [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(seconds))),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]
    return subprocess.Popen(pinned(argv, cpus), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(path: Path, *, top: int = 25) -> str:
    """Self and inclusive shares of the sampled Python frames, by function and by line (of busy samples)."""
    by_line: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for raw in path.read_text().splitlines():
        stack, _, count = raw.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if not frames or not count.isdigit():
            continue
        n = int(count)
        total += n
        by_line[frames[-1]] += n
        for function in {_LINE.sub(")", f) for f in frames}:
            inclusive[function] += n
    if not total:
        return f"{path.name}: no samples"
    out = [f"{path.name}: {total} busy samples", "  self (by line):"]
    out += [f"    {100 * n / total:5.1f}%  {f}" for f, n in by_line.most_common(top)]
    out.append("  inclusive (by function):")
    out += [f"    {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top + 15)]
    return "\n".join(out)
