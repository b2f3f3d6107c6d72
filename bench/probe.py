"""What a server process spent on a load, from outside it (Linux /proc and its /metrics).

`ServerProbe.measure(load)` runs `load` and gives, per answered call, the CPU time of the whole
server and of its main thread (the asyncio event loop that runs every gRPC handler and all of
advguard's Python but the model runs); the event loop's CPU time over the load's wall time (its
busy share: near 1, the loop is the server's bottleneck, whatever the machine's other cores do;
it understates a loop that waits for a core); and the mean batch the dynamic batcher ran (from
the `advguard_batch_size` histogram). Where /proc is missing, the /proc columns are None.
"""
from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import LoadResult


def _stat_fields(path: Path) -> list[str] | None:
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


@dataclass
class ServerProbe:
    pid: int
    metrics_port: int
    model: str

    def cpu_seconds(self, tid: int | None = None) -> float | None:
        """CPU time of the process, or of its thread `tid`."""
        where = f"/proc/{self.pid}" + (f"/task/{tid}" if tid is not None else "")
        fields = _stat_fields(Path(where) / "stat")
        return None if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def batches(self) -> tuple[float, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30).read().decode()
        found = [re.search(rf'^advguard_batch_size_{part}{{model="{re.escape(self.model)}"}} (\S+)$', text, re.M)
                 for part in ("sum", "count")]
        return tuple(float(m.group(1)) if m else 0.0 for m in found)

    def measure(self, load: Callable[[], LoadResult]) -> dict:
        """Run `load`; {"result", "server_cpu_us", "loop_cpu_us", "loop_busy", "mean_batch"}."""
        cpu, loop_cpu, (images, batches) = self.cpu_seconds(), self.cpu_seconds(self.pid), self.batches()
        result = load()
        cpu_after, loop_after, (images_after, batches_after) = (self.cpu_seconds(), self.cpu_seconds(self.pid),
                                                                self.batches())

        def per_call(before: float | None, after: float | None) -> float | None:
            return (after - before) / result.ok * 1e6 if before is not None and after is not None and result.ok else None

        mean = (images_after - images) / (batches_after - batches) if batches_after > batches else None
        return {"result": result, "server_cpu_us": per_call(cpu, cpu_after), "loop_cpu_us": per_call(loop_cpu, loop_after),
                "loop_busy": (loop_after - loop_cpu) / result.seconds if loop_cpu is not None and result.seconds else None,
                "mean_batch": mean}
