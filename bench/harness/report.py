"""The benchmark's results as rich tables, as Markdown (for bench/README.md), and as JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.harness.actions import KINDS


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def sections(results: dict[str, Any]) -> Iterator[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table."""
    machine = results["machine"]
    config = results["config"]
    yield (
        "Run",
        ["", ""],
        [
            ["commit", results["commit"]],
            [
                "machine",
                f"{machine['cpus']} CPUs, {machine['cpu_model']}, {machine['memory_gib']} GiB",
            ],
            ["load average at start", ", ".join(map(str, machine["load_average_at_start"]))],
            [
                "parameters",
                f"--count {config['count']} --rounds {config['rounds']} "
                + (f"--open {config['open']}" if config["open"] else "--skip-scale"),
            ],
            ["run time", f"{results['seconds']:.0f} s"],
        ],
    )
    t = results["throughput"]
    rows = [
        [
            f"round {i + 1}",
            _fmt(r["posflow_per_s"]),
            _fmt(r["floor_per_s"]),
            _fmt(r["ratio"]),
            _fmt(r["posflow_cpu_ms_per_workflow"].get("worker_posflow")),
            _fmt(r["floor_cpu_ms_per_workflow"].get("worker_floor")),
            _fmt(r["posflow_cpu_ms_per_workflow"].get("server")),
            _fmt(r["floor_cpu_ms_per_workflow"].get("server")),
            _fmt(r["posflow_cpu_ms_per_workflow"].get("harness")),
            _fmt(r["floor_cpu_ms_per_workflow"].get("harness")),
        ]
        for i, r in enumerate(t["rounds"])
    ]
    rows.append(
        [
            "median",
            _fmt(t["posflow_per_s"]),
            _fmt(t["floor_per_s"]),
            _fmt(t["ratio"]),
            f"x{t['worker_cpu_ratio']}",
            "",
            f"x{t['server_cpu_ratio']}",
            "",
            "",
            "",
        ]
    )
    yield (
        "1. Throughput: completed workflows per second (first start to last close), CPU ms per "
        "workflow by process (harness: gateway, services and driver)",
        [
            "",
            "posflow/s",
            "floor/s",
            "ratio",
            "worker cpu posflow",
            "worker cpu floor",
            "server cpu posflow",
            "server cpu floor",
            "harness cpu posflow",
            "harness cpu floor",
        ],
        rows,
    )
    costs = results["cost"]
    names = list(costs)
    kinds = [k for k in KINDS if any(k in costs[n]["actions_by_kind"] for n in names)]
    rows = [
        ["history events", *(_fmt(costs[n]["events"]) for n in names)],
        [
            "  of which workflow-task events",
            *(_fmt(costs[n]["workflow_task_events"]) for n in names),
        ],
        ["history bytes", *(_fmt(costs[n]["bytes"]) for n in names)],
        ["billable actions", *(_fmt(costs[n]["actions"]) for n in names)],
        *([f"  {k}", *(_fmt(costs[n]["actions_by_kind"].get(k, 0)) for n in names)] for k in kinds),
        [
            "  not billed: TemporalChangeVersion upserts",
            *(_fmt(costs[n]["not_billed"].get("change_version_upsert", 0)) for n in names),
        ],
        ["histories (medians over)", *(_fmt(costs[n]["histories"]) for n in names)],
    ]
    yield ("2. Cost per workflow (medians)", ["", *(n.replace("_", " ") for n in names)], rows)
    lat = results["latency"]
    rows = [
        [
            label,
            *(
                _fmt(lat[f"{who}_{key}"][q])
                for who in ("posflow", "floor")
                for q in ("p50_ms", "p95_ms", "p99_ms")
            ),
            _fmt(lat[f"posflow_{key}"]["n"]),
        ]
        for label, key in (
            ("update's task scheduled -> next activity started", "arrived_started"),
            ("update accepted -> next activity scheduled", "accepted_scheduled"),
            ("update accepted -> next activity started", "accepted_started"),
        )
    ]
    yield (
        "3. Callback latency in ms, under the throughput load (posflow/floor p95 of the first "
        f"row: x{lat['p95_ratio']})",
        ["", "posflow p50", "p95", "p99", "floor p50", "p95", "p99", "updates (posflow)"],
        rows,
    )
    if "scale" in results:
        s = results["scale"]
        rows = []
        for key, label in (
            ("posflow_default_cache", "posflow, default cache"),
            ("posflow_bounded_cache", "posflow, bounded cache (filled by queries)"),
            ("floor_default_cache", "floor, default cache"),
        ):
            m = s[key]
            rows.append(
                [
                    label,
                    _fmt(m["cache"]),
                    _fmt(m["cached_workflows"]),
                    _fmt(m["rss_idle_mib"]),
                    _fmt(m["rss_mib"]),
                    _fmt(m["kib_per_cached_workflow"]),
                ]
            )
        yield (
            f"4a. Scale: worker memory with {s['open']:,} open applications parked in review "
            f"(posflow/floor per cached workflow: x{s['memory_ratio_per_cached_workflow']})",
            ["", "cache", "cached", "RSS idle MiB", "RSS MiB", "KiB per cached workflow"],
            rows,
        )
        rows = [
            ["applications started per second (gateway POST)", _fmt(s["start_rate_per_s"])],
            ["applications parked in review per second", _fmt(s["parked_rate_per_s"])],
            [
                "floor workflows parked per second",
                _fmt(s["floor_default_cache"]["parked_rate_per_s"]),
            ],
            [
                "cold queries per second (bounded cache: replay per query)",
                _fmt(s["posflow_bounded_cache"]["cold_queries_per_s"]),
            ],
            *(
                [
                    f"{name} p50 / p95 / p99 ms",
                    f"{_fmt(v['p50_ms'])} / {_fmt(v['p95_ms'])} / {_fmt(v['p99_ms'])}",
                ]
                for name, v in s["latency"].items()
            ),
        ]
        yield (f"4b. Scale: rates and the ops pages at {s['open']:,} open", ["", ""], rows)
    r = results["replay"]
    yield (
        "5. Replay check (posflow admin replay's function)",
        ["", ""],
        [
            ["histories per second (median)", _fmt(r["per_second"])],
            ["runs", ", ".join(_fmt(x) for x in r["runs"])],
            ["histories per run", _fmt(r["histories"])],
            ["failures", _fmt(r["failures"])],
        ],
    )


def print_tables(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    for title, header, rows in sections(results):
        table = Table(title=title, title_justify="left")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def markdown(results: dict[str, Any]) -> str:
    out: list[str] = []
    for title, header, rows in sections(results):
        out.append(f"**{title}**\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        out.extend("| " + " | ".join(row) + " |" for row in rows)
        out.append("")
    return "\n".join(out)


def write_json(results: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    path = directory / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return path
