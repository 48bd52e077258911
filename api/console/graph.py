"""A saga's step graph as an inline SVG: a layered drawing of its DAG, nodes coloured by state.

    graph_svg(saga)                                      # the definition alone
    graph_svg(saga, {"reserve": "succeeded", "charge": "failed"})

Each step sits in the layer after the deepest step it waits for, so a sequence reads top
to bottom and a `Parallel` group side by side; within a layer steps are ordered by where
the steps they wait for stand (fewer crossings), then by the definition's order. The
colours are attributes of the drawing itself, so it looks the same on any page; each node
also carries the class `state-<state>` for styles and tests.
"""

from __future__ import annotations

from collections.abc import Mapping

from markupsafe import Markup, escape

from saga.definitions import Saga, Signal, Timer
from saga.definitions.steps import RemoteTask
from saga.timeline import duration

__all__ = ["graph_svg", "PALETTE"]

# state -> (fill, stroke); "" is a step with no state (not reached, or the bare definition).
PALETTE = {
    "": ("#f8fafc", "#94a3b8"),
    "queued": ("#e0f2fe", "#0369a1"),
    "running": ("#dbeafe", "#1d4ed8"),
    "waiting": ("#fef9c3", "#a16207"),
    "retry_wait": ("#ffedd5", "#c2410c"),
    "succeeded": ("#dcfce7", "#15803d"),
    "failed": ("#fee2e2", "#b91c1c"),
    "cancelled": ("#f1f5f9", "#64748b"),
    "parked": ("#fae8ff", "#a21caf"),
    "compensating": ("#ede9fe", "#6d28d9"),
    "compensated": ("#ede9fe", "#6d28d9"),
    "compensation_failed": ("#fee2e2", "#6d28d9"),
}
CHAR_W = 7.2  # px per character of the 12px name, near enough for a sans-serif
SMALL_W = 6.0  # the same for the 10px line under it
NODE_H = 40
GAP_X, GAP_Y, PAD = 18, 30, 8
MIN_W, MAX_W = 96, 230


def graph_svg(saga: Saga, states: Mapping[str, str] | None = None) -> Markup:
    """The step DAG of `saga` as an `<svg>` element; `states` maps step name → state."""
    states = states or {}
    layers, chains = _layers(saga)
    width = max(MIN_W, min(MAX_W, round(max(
        max(len(n) * CHAR_W, len(_label(saga, n, states.get(n, ""))) * SMALL_W)
        for n in saga.order) + 20)))
    widest = max(len(layer) for layer in layers)
    canvas_w = PAD * 2 + widest * width + (widest - 1) * GAP_X
    canvas_h = PAD * 2 + len(layers) * NODE_H + (len(layers) - 1) * GAP_Y
    where: dict[str, tuple[float, float]] = {}
    for depth, layer in enumerate(layers):
        row_w = len(layer) * width + (len(layer) - 1) * GAP_X
        left = (canvas_w - row_w) / 2
        for i, name in enumerate(layer):
            where[name] = (left + i * (width + GAP_X), PAD + depth * (NODE_H + GAP_Y))
    edges = [_edge([where[stop] for stop in chain], width) for chain in chains]
    nodes = [_node(saga, name, where[name], width, states.get(name, "")) for name in saga.order]
    described = ", ".join(f"{n} ({states[n]})" if n in states else n for n in saga.order)
    return Markup(
        '<svg class="saga-graph" xmlns="http://www.w3.org/2000/svg" role="img" '
        'viewBox="0 0 {w} {h}" width="{w}" height="{h}" aria-label="{label}">'
        '<g class="edges" fill="none" stroke="#64748b" stroke-width="1.5">{edges}</g>'
        '<g class="nodes">{nodes}</g></svg>').format(
        w=round(canvas_w), h=round(canvas_h),
        label=f"Steps of {saga.name} v{saga.version}: {described}",
        edges=Markup("".join(edges)), nodes=Markup("".join(nodes)))


def _layers(saga: Saga) -> tuple[list[list[str]], list[list[str]]]:
    """Steps by depth (longest path from a first step), each layer ordered to cross less;
    and each edge as the chain of slots it passes: an edge that skips layers holds a slot
    in each (a name starting with NUL), so it runs beside the steps there, not through them.
    """
    depth: dict[str, int] = {}
    for name in saga.order:  # topological: every dependency is placed first
        depth[name] = 1 + max((depth[d] for d in saga.graph[name]), default=-1)
    layers: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    before: dict[str, list[str]] = {}  # each slot's slots one layer up
    index: dict[str, int] = {}
    chains = []
    for i, name in enumerate(saga.order):
        layers[depth[name]].append(name)
        index[name] = i
        before[name] = []
        for dep in sorted(saga.graph[name]):
            chain = [dep]
            for level in range(depth[dep] + 1, depth[name]):
                slot = f"\0{dep}>{name}:{level}"
                layers[level].append(slot)
                index[slot], before[slot] = i, [chain[-1]]
                chain.append(slot)
            before[name].append(chain[-1])
            chains.append([*chain, name])
    position: dict[str, float] = {}
    for layer in layers:
        def pull(name: str) -> tuple[float, int]:
            ups = before[name]
            return (sum(position[u] for u in ups) / len(ups) if ups else -1.0), index[name]

        layer.sort(key=pull)
        position.update({name: i for i, name in enumerate(layer)})
    return layers, chains


def _edge(stops: list[tuple[float, float]], width: float) -> str:
    """A curve from the first step's bottom to the last's top, straight through any slots."""
    x, y = stops[0][0] + width / 2, stops[0][1] + NODE_H
    path = [f"M{x:.1f},{y:.1f}"]
    for i, (left, top) in enumerate(stops[1:], 1):
        x2, y2 = left + width / 2, top - (4 if i == len(stops) - 1 else 0)
        bend = (y2 - y) / 2
        path.append(f"C{x:.1f},{y + bend:.1f} {x2:.1f},{y2 - bend:.1f} {x2:.1f},{y2:.1f}")
        x, y = x2, y2
        if i < len(stops) - 1:  # a slot: pass straight through it
            y += NODE_H
            path.append(f"L{x:.1f},{y:.1f}")
    return (f'<path d="{" ".join(path)}"/><path d="M{x - 4:.1f},{y - 4:.1f} L{x:.1f},{y:.1f} '
            f'L{x + 4:.1f},{y - 4:.1f}" stroke-linejoin="round"/>')


def _node(saga: Saga, name: str, at: tuple[float, float], width: float, state: str) -> str:
    # Plain f-strings, each text escaped: a saga of hundreds of steps draws in milliseconds.
    fill, stroke = PALETTE.get(state, PALETTE[""])
    kind = _kind(saga, name)
    title = escape(f"{name}: {kind}" + (f" — {state.replace('_', ' ')}" if state else ""))
    dashed = ' stroke-dasharray="5 3"' if saga.by_name[name].wait is not None else ""
    x, y, cx = at[0], at[1], at[0] + width / 2
    return (
        f'<g class="node state-{escape(state or "none")}" data-step="{escape(name)}">'
        f'<title>{title}</title><rect x="{x:.1f}" y="{y:.1f}" width="{round(width)}" '
        f'height="{NODE_H}" rx="6" fill="{fill}" stroke="{stroke}" '
        f'stroke-width="{3 if saga.pivot == name else 1.5}"{dashed}/>'
        f'<text x="{cx:.1f}" y="{y + 17:.1f}" text-anchor="middle" font-size="12" '
        f'font-family="system-ui, sans-serif" fill="#0f172a">'
        f'{escape(_fit(name, width, CHAR_W))}</text>'
        f'<text x="{cx:.1f}" y="{y + 31:.1f}" text-anchor="middle" font-size="10" '
        f'font-family="system-ui, sans-serif" fill="#475569">'
        f'{escape(_fit(_label(saga, name, state), width, SMALL_W))}</text></g>')


def _label(saga: Saga, name: str, state: str) -> str:
    """The small line under a step's name: what it is, and its state."""
    return _kind(saga, name) + (f" · {state.replace('_', ' ')}" if state else "")


def _fit(text: str, width: float, char_w: float) -> str:
    room = int((width - 10) / char_w)
    return text if len(text) <= room else text[:room - 1] + "…"


def _kind(saga: Saga, name: str) -> str:
    """A few words on what the step is: a timer, a signal wait, a remote task; the pivot."""
    step = saga.by_name[name]
    words = []
    if isinstance(step.wait, Timer):
        words.append(f"timer {duration(step.wait.duration)}" if step.wait.duration else "timer")
    elif isinstance(step.wait, Signal):
        words.append(f"signal {step.wait.name}")
    elif isinstance(step.action, RemoteTask):
        words.append("remote")
    else:
        words.append("step")
    if step.compensate is not None:
        words.append("undo")
    if saga.pivot == name:
        words.append("pivot")
    return " ".join(words)
