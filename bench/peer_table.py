"""The table of `bench.peers`: the fastest round of each row, and its rate and p99 against the
best peer's (MLServer's or KServe's) at the same protocol and concurrency.

A row is a dict with `what` (the server and variant; advguard's start with "advguard"), `proto`
("gRPC" and "REST": OIP v2 ModelInfer; "Classify": advguard's own API), `c`, `rate` (req/s),
`p50_ms`, `p99_ms`, `errors` and `load`. The peers have no Classify, so the Classify rows are set
against the best peer's OIP gRPC row (the same image over the same transport). Pure: rows in,
rows and lines out. Example: `print("\\n".join(lines(compare(rows), notes)))`.
"""
from __future__ import annotations

import math

OWN_API = "Classify"
AGAINST = {OWN_API: "gRPC"}  # the peers' protocol a row is compared with, where it is not its own
# issue 20, at c=32: advguard's rate over the best peer's OIP gRPC rate, for OIP and own Classify
GOALS = {"advguard guarded": 1.5, "advguard unguarded": 2.0,
         "advguard native guarded": 1.5, "advguard native unguarded": 2.0}  # --front native
GOAL_C = 32


def is_peer(row: dict) -> bool:
    return not row["what"].startswith("advguard")


def best_rounds(rows: list[dict]) -> list[dict]:
    """The fastest round of each (what, proto, c), in the order first seen."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["what"], r["proto"], r["c"])
        if key not in best or r["rate"] > best[key]["rate"]:
            best[key] = r
    return list(best.values())


def compare(rows: list[dict]) -> list[dict]:
    """best_rounds(rows), each with `vs` (the best peer's row it is set against: "<what> <proto>",
    None without one), `rate_ratio` and `p99_ratio` (None without a peer)."""
    best = best_rounds(rows)
    table = []
    for r in best:
        proto = AGAINST.get(r["proto"], r["proto"])
        top = max((p for p in best if is_peer(p) and p["proto"] == proto and p["c"] == r["c"]),
                  key=lambda p: p["rate"], default=None)
        table.append({**r, "vs": f"{top['what']} {proto}" if top else None,
                      "rate_ratio": r["rate"] / top["rate"] if top and top["rate"] else None,
                      "p99_ratio": r["p99_ms"] / top["p99_ms"] if top and top["p99_ms"] > 0 else None})
    return table


def _ratio(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"


def goal_lines(table: list[dict]) -> list[str]:
    """advguard's c=32 rates over the best peer's OIP gRPC rate, against the issue's goals."""
    out = []
    for proto, label in (("gRPC", "OIP ModelInfer, gRPC"), (OWN_API, "own Classify")):
        parts = []
        for what, goal in GOALS.items():
            r = next((r for r in table if (r["what"], r["proto"], r["c"]) == (what, proto, GOAL_C)), None)
            if r is not None:
                got = r["rate_ratio"]
                verdict = "no peer measured" if got is None else "met" if got >= goal else "missed"
                parts.append(f"{what.removeprefix('advguard ')} {_ratio(got)}{'' if got is None else 'x'} "
                             f"[>= {goal:g}x: {verdict}]")
        if parts:
            out.append(f"  {label}: {', '.join(parts)}")
    return [f"goals at c={GOAL_C}, advguard's rate / the best peer's OIP gRPC rate:", *out] if out else []


def lines(table: list[dict], notes: list[str]) -> list[str]:
    out = [f"{'what':20} {'proto':8} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'err':>5} {'load1':>6}"
           f"  {'req/s / best peer':>17}  {'p99 / best peer':>15}"]
    for r in table:
        out.append(f"{r['what']:20} {r['proto']:8} {r['c']:>3} {r['rate']:>8.0f} {r['p50_ms']:>8.2f} "
                   f"{r['p99_ms']:>8.2f} {r['errors']:>5} {r['load']:>6.2f}  {_ratio(r['rate_ratio']):>17}  "
                   f"{_ratio(r['p99_ratio']):>15}")
    if any(r["proto"] == OWN_API for r in table):
        out.append(f"{OWN_API}: advguard's own API (/advguard.v1.GuardedClassifier/Classify, one uint8 1x28x28 image "
                   "per call, gRPC from h2load); MLServer and KServe have no such API, so these rows are set against "
                   "the best peer's OIP gRPC (ModelInfer, FP32) row at the same c")
    return out + goal_lines(table) + notes
