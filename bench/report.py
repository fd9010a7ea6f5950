"""The results of a run: one row per (case, target), the table printed at the end, goals, and the JSON file."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.load import LoadResult


@dataclass
class Row:
    case: str
    target: str
    result: LoadResult
    # CPU seconds over the measured window: the target's processes, the fake upstream (when it is not the
    # target), the load generator, and the whole machine's process, interrupt and steal time.
    cpu: dict[str, float] = field(default_factory=dict)
    # requests/s of every repeat when a case was measured more than once (this row is the median one)
    runs: list[float] = field(default_factory=list)

    def util(self, part: str) -> float:
        """Percent of one CPU."""
        return 100 * self.cpu.get(part, 0.0) / self.result.seconds if self.result.seconds else 0.0

    @property
    def noise(self) -> float:
        """Share of a CPU lost to others while measuring: other processes' CPU time plus the hypervisor's
        steal. Above a few percent, this row's numbers are pessimistic."""
        if not self.result.seconds:
            return 0.0
        ours = sum(self.cpu.get(k, 0.0) for k in ("target", "services", "upstream", "load"))
        other = max(0.0, self.cpu.get("machine_process", 0.0) - ours)
        return (other + self.cpu.get("machine_steal", 0.0)) / self.result.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * self.cpu.get("target", 0.0) / self.result.requests if self.result.requests else 0.0


@dataclass
class TargetInfo:
    name: str
    label: str
    ready_seconds: float | None
    # (pid, VmRSS KiB, VmHWM KiB) of each worker after the run
    workers: list[tuple[int, int, int]]
    # (what was checked after the load, whether it held, its last line of output)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    # The soak's summary, when one ran (`--soak`)
    soak: str | None = None


@dataclass(frozen=True)
class Goal:
    """A number an issue asks for, checked against the run: `metric` of `target` in `case`."""

    text: str
    target: str
    case: str
    metric: str
    at_most: float | None = None
    at_least: float | None = None

    def check(self, value: float) -> bool:
        if self.at_most is not None and value > self.at_most:
            return False
        return not (self.at_least is not None and value < self.at_least)


# Issue 2's goals for the bare core; issue 7's for the API-key-only ("auth") and full chains, as ratios to
# LiteLLM measured in the same run.
GOALS: tuple[Goal, ...] = (
    Goal("bare core: added p50 at concurrency 1 <= 1 ms", "minimal", "chat-c1", "added_p50", at_most=1.0),
    Goal("bare core: >= 2,500 requests/s at concurrency 64, one worker", "minimal", "chat-c64", "rps", at_least=2500),
    Goal("auth-only chain: >= 20x LiteLLM's requests/s at concurrency 64", "auth", "chat-c64", "ratio", at_least=20),
    Goal("auth-only chain: added p50 at concurrency 1 <= 1 ms", "auth", "chat-c1", "added_p50", at_most=1.0),
    Goal("full chain: >= 8x LiteLLM's requests/s at concurrency 64", "full", "chat-c64", "ratio", at_least=8),
    Goal("full chain: added p50 at concurrency 1 <= 2.5 ms", "full", "chat-c1", "added_p50", at_most=2.5),
    Goal("full chain: >= 10x LiteLLM's stream throughput", "full", "stream-c16", "ratio", at_least=10),
    Goal(
        "full chain: added time to first byte <= 2 ms, one stream at a time",
        "full",
        "stream-c1",
        "added_ttfb_p50",
        at_most=2.0,
    ),
    Goal(
        "full chain: added time to first byte <= 2 ms at concurrency 16",
        "full",
        "stream-c16",
        "added_ttfb_p50",
        at_most=2.0,
    ),
)

_COLUMNS = (
    "case",
    "target",
    "req/s",
    "p50 ms",
    "p99 ms",
    "+p50",
    "ttfb p50",
    "ttfb p99",
    "+ttfb",
    "errors",
    "CPU us/req",
    "CPU% tgt/svc/up/load/irq",
    "noise",
)
NOTES = (
    "p50/p99 of a stream are to its last byte; +p50 and +ttfb are the target's minus the baseline's.",
    "CPU us/req: CPU time of the target's own processes per request. CPU%: percent of one CPU used by the",
    "target, the services it uses (MariaDB, Redis), the fake upstream (when not the target), the load",
    "generator, and interrupts (loopback TCP).",
    "noise: CPU taken by other processes and the hypervisor meanwhile; high noise makes a row pessimistic.",
)


@dataclass
class Report:
    rows: list[Row]
    targets: list[TargetInfo]
    machine: dict[str, Any]
    settings: dict[str, Any]
    baseline: str = "direct"
    # A target to express every other target's requests/s as a multiple of (LiteLLM, in issue 7).
    ratio_to: str | None = None
    goals: tuple[Goal, ...] = GOALS

    def row(self, case: str, target: str) -> Row | None:
        return next((r for r in self.rows if r.case == case and r.target == target), None)

    def value(self, row: Row, metric: str) -> float | None:
        """rps, p50, p99, ttfb_p50, ttfb_p99, added_<one of those> (over the baseline), or ratio."""
        res = row.result
        if metric == "rps":
            return res.rps
        if metric in ("p50", "p99", "ttfb_p50", "ttfb_p99"):
            found: float | None = getattr(res, metric)
            return found
        if metric.startswith("added_"):
            base = self.row(row.case, self.baseline)
            if base is None or row.target == self.baseline:
                return None
            mine, theirs = self.value(row, metric[6:]), self.value(base, metric[6:])
            return None if mine is None or theirs is None else mine - theirs
        if metric == "ratio":
            ref = self.row(row.case, self.ratio_to) if self.ratio_to else None
            return res.rps / ref.result.rps if ref is not None and ref.result.rps else None
        raise ValueError(f"unknown metric {metric!r}")

    def checked_goals(self) -> list[tuple[Goal, float, bool]]:
        out = []
        for goal in self.goals:
            row = self.row(goal.case, goal.target)
            value = None if row is None else self.value(row, goal.metric)
            if value is not None:
                out.append((goal, value, goal.check(value)))
        return out

    def table(self, *, markdown: bool = False) -> str:
        head = list(_COLUMNS)
        if self.ratio_to is not None:
            head.insert(3, f"x {self.ratio_to}")
        lines = [head]
        for row in self.rows:
            res = row.result
            cells = [
                row.case,
                row.target,
                f"{res.rps:,.0f}",
                _ms(res.p50),
                _ms(res.p99),
                _ms(self.value(row, "added_p50"), signed=True),
                _ms(res.ttfb_p50),
                _ms(res.ttfb_p99),
                _ms(self.value(row, "added_ttfb_p50"), signed=True),
                str(res.error_count),
                f"{row.cpu_us_per_request:,.0f}",
                "/".join(f"{row.util(p):.0f}" for p in ("target", "services", "upstream", "load", "machine_irq")),
                f"{row.noise:.0%}",
            ]
            if self.ratio_to is not None:
                ratio = self.value(row, "ratio")
                cells.insert(3, "-" if ratio is None else f"{ratio:.1f}x")
            lines.append(cells)
        if markdown:
            rule = ["---" if i < 2 else "---:" for i in range(len(head))]
            return "\n".join("| " + " | ".join(line) + " |" for line in [head, rule, *lines[1:]])
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = [
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
            for line in lines
        ]
        out.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(out)

    def memory_lines(self) -> list[str]:
        lines = []
        for info in self.targets:
            if not info.workers:
                continue
            rss = ", ".join(f"{r / 1024:.0f}" for _, r, _ in info.workers)
            peak = ", ".join(f"{h / 1024:.0f}" for _, _, h in info.workers)
            ready = "-" if info.ready_seconds is None else f"{info.ready_seconds:.2f} s"
            lines.append(
                f"  {info.name}: {len(info.workers)} worker(s), RSS {rss} MiB (peak {peak} MiB), "
                f"ready {ready} after start"
            )
        return lines

    def phase_lines(self) -> list[str]:
        """Each gateway stream row's time inside the gateway before its first byte, phase by phase."""
        lines = []
        for row in self.rows:
            phases = row.result.phases
            if phases:
                each = ", ".join(f"{name} {ms:.2f}" for name, ms in phases.items())
                lines.append(f"  {row.target} {row.case}: {each} (sum {sum(phases.values()):.2f})")
        return lines

    def after_lines(self) -> list[str]:
        """Soaks and the checks run after each target's load."""
        lines = []
        for info in self.targets:
            if info.soak:
                lines.append(info.soak)
            for what, ok, output in info.checks:
                lines.append(f"  {info.name}: {'ok' if ok else 'FAILED'}  {what}: {output}")
        return lines

    def load_lines(self) -> list[str]:
        """How the fake paces its streams and how the stream clients start, which decide what the stream
        rows mean: a zero-latency fake saturates every target; a paced one leaves the machine mostly idle.
        Nothing when no stream case ran."""
        if all(row.result.ttfb_p50 is None for row in self.rows):
            return []
        s = self.settings
        chunks, interval, stagger = s.get("chunks", 0), s.get("chunk_interval", 0.0), s.get("stagger", 0.0)
        pace = f"{interval * 1000:g} ms apart" if interval else "all at once (saturating)"
        start = f"spread over {stagger:g} s" if stagger else "all at once (then in step)"
        return [f"streams: {chunks} chunks from the fake, {pace}; stream clients' first requests {start}"]

    def render(self) -> str:
        parts = [self.table(), "", *NOTES, *self.load_lines(), "", "gateway workers after the run:"]
        parts += self.memory_lines()
        phases = self.phase_lines()
        if phases:
            parts += ["", "before the first byte, inside the gateway (its server-timing header, median ms):", *phases]
        after = self.after_lines()
        if after:
            parts += ["", "after the load:", *after]
        goals = self.checked_goals()
        if goals:
            parts += ["", "goals:"]
            parts += [f"  {'met' if ok else 'MISSED':6}  {g.text}: measured {v:,.2f}" for g, v, ok in goals]
        return "\n".join(parts)

    def markdown(self) -> str:
        """The table and the memory lines as Markdown, for docs/performance.md."""
        memory = [line.strip() for line in [*self.load_lines(), *self.memory_lines(), *self.after_lines()]]
        return "\n".join([self.table(markdown=True), "", *(f"- {line}" for line in memory)]) + "\n"

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        for row in self.rows:
            item: dict[str, Any] = {
                "case": row.case,
                "target": row.target,
                **asdict(row.result),
                "rps": row.result.rps,
                "runs_rps": row.runs,
                "cpu_seconds": row.cpu,
                "cpu_us_per_request": row.cpu_us_per_request,
                "noise": row.noise,
            }
            for metric in ("added_p50", "added_p99", "added_ttfb_p50", "ratio"):
                item[metric] = self.value(row, metric)
            rows.append(item)
        goals = [{**asdict(g), "value": v, "met": ok} for g, v, ok in self.checked_goals()]
        data = {
            "machine": self.machine,
            "settings": self.settings,
            "results": rows,
            "targets": [asdict(t) for t in self.targets],
            "goals": goals,
        }
        path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


def _ms(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"
