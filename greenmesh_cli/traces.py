"""Reading the local JSON-lines spans (written when no OTLP endpoint is set) back as traces."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table
from rich.tree import Tree

from meshkit.telemetry import TRACES_DIRNAME


def _ns(span: dict[str, object], key: str) -> int:
    value = span[key]
    return value if isinstance(value, int) else 0


@dataclass
class TraceSummary:
    trace_id: str
    spans: list[dict[str, object]] = field(default_factory=list)

    @property
    def start_ns(self) -> int:
        return min(_ns(s, "start_ns") for s in self.spans)

    @property
    def end_ns(self) -> int:
        return max(_ns(s, "end_ns") for s in self.spans)

    @property
    def root(self) -> dict[str, object]:
        ids = {s["span_id"] for s in self.spans}
        roots = [s for s in self.spans if s.get("parent_span_id") not in ids]
        return min(roots, key=lambda s: _ns(s, "start_ns"))

    @property
    def services(self) -> list[str]:
        return sorted({str(s["service"]) for s in self.spans})


def load_traces(data_dir: Path) -> dict[str, TraceSummary]:
    traces: dict[str, TraceSummary] = defaultdict(lambda: TraceSummary(""))
    for path in sorted((data_dir / TRACES_DIRNAME).glob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    span = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                trace = traces[span["trace_id"]]
                trace.trace_id = span["trace_id"]
                trace.spans.append(span)
    return dict(traces)


def _ms(nanoseconds: int) -> str:
    return f"{nanoseconds / 1e6:.1f} ms"


def trace_list(traces: dict[str, TraceSummary], limit: int) -> Table:
    table = Table(title="recent traces (newest first)")
    for column in ("trace id", "root span", "services", "spans", "duration"):
        table.add_column(column)
    newest = sorted(traces.values(), key=lambda t: t.start_ns, reverse=True)[:limit]
    for trace in newest:
        root = trace.root
        table.add_row(
            trace.trace_id,
            f"{root['service']}: {root['name']}",
            ", ".join(trace.services),
            str(len(trace.spans)),
            _ms(trace.end_ns - trace.start_ns),
        )
    return table


def trace_tree(trace: TraceSummary) -> Tree:
    children: dict[object, list[dict[str, object]]] = defaultdict(list)
    ids = {s["span_id"] for s in trace.spans}
    roots = []
    for span in sorted(trace.spans, key=lambda s: _ns(s, "start_ns")):
        parent = span.get("parent_span_id")
        if parent in ids:
            children[parent].append(span)
        else:
            roots.append(span)
    tree = Tree(f"trace {trace.trace_id} ({_ms(trace.end_ns - trace.start_ns)})")

    def label(span: dict[str, object]) -> str:
        duration = _ns(span, "end_ns") - _ns(span, "start_ns")
        status = "" if span.get("status") != "ERROR" else " [red]ERROR[/red]"
        return f"[bold]{span['service']}[/bold] {span['name']} [dim]{span['kind']}[/dim] {_ms(duration)}{status}"

    def add(node: Tree, span: dict[str, object]) -> None:
        branch = node.add(label(span))
        for child in children.get(span["span_id"], []):
            add(branch, child)

    for root in roots:
        add(tree, root)
    return tree


def find_trace(traces: dict[str, TraceSummary], prefix: str) -> list[TraceSummary]:
    return [trace for trace_id, trace in traces.items() if trace_id.startswith(prefix.lower())]
