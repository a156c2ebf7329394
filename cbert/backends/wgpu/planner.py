"""Shapes of every value for a (batch, seq), and activation buffers planned by lifetime.

The plan is made once per shape class, at the class's capacity: every (batch, seq) of the
class fits in the same buffers, so a new sequence length reuses them instead of allocating.
"""

from __future__ import annotations

from math import prod

from ...ir import Graph, Op


def infer_shapes(graph: Graph, param_shapes: dict[str, tuple], batch: int, seq: int) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {name: (batch, seq) for name in graph.inputs}
    shapes.update(param_shapes)
    for n in graph.nodes:
        a = n.kwargs
        if n.op is Op.EMBED:
            s = (batch, seq, param_shapes[n.inputs[0]][0])
        elif n.op is Op.MASK_BIAS:
            s = (batch, seq)
        elif n.op is Op.LINEAR:
            s = shapes[n.inputs[0]][:-1] + (param_shapes[n.inputs[1]][0],)
        elif n.op is Op.ATTENTION:
            s = (batch, seq, shapes[n.inputs[0]][-1] // 3)
        elif n.op is Op.ATTN_PROBS:
            s = (batch, a["heads"], seq, seq)
        elif n.op is Op.ATTN_APPLY:
            s = (batch, seq, shapes[n.inputs[1]][-1] // 3)
        elif n.op in (Op.ADD_LN, Op.LAYERNORM):
            s = shapes[n.inputs[0]]
        elif n.op is Op.FIRST_TOKEN:
            x = shapes[n.inputs[0]]
            s = (x[0], x[-1])
        else:
            raise ValueError(f"backend='wgpu' cannot lower op {n.op.value!r} (node {n.output!r})")
        shapes[n.output] = s
    return shapes


def value_itemsize(graph: Graph, itemsize: int) -> dict[str, int]:
    """Bytes per element of each node output: the additive mask stays f32 in every dtype."""
    return {n.output: 4 if n.op is Op.MASK_BIAS else itemsize for n in graph.nodes}


def assign_slots(graph: Graph, nbytes: dict[str, int]) -> tuple[dict[str, int], list[int]]:
    """Map each node output to a reusable slot; returns (slot of value, bytes of each slot).

    A value's slot returns to the pool after its last reader; graph outputs are never freed
    (they are copied back after the last dispatch). Best fit first, else grow the largest.
    """
    last_use: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for name in n.inputs:
            last_use[name] = i
    keep = set(graph.outputs.values())
    slot_of: dict[str, int] = {}
    sizes: list[int] = []
    free: list[int] = []
    for i, n in enumerate(graph.nodes):
        need = nbytes[n.output]
        fits = [s for s in free if sizes[s] >= need]
        if fits:
            slot = min(fits, key=lambda s: sizes[s])
        elif free:
            slot = max(free, key=lambda s: sizes[s])
            sizes[slot] = need
        else:
            slot = len(sizes)
            sizes.append(need)
        if slot in free:
            free.remove(slot)
        slot_of[n.output] = slot
        for name in set(n.inputs):
            if name in slot_of and last_use[name] == i and name not in keep:
                free.append(slot_of[name])
        if n.output not in keep and n.output not in last_use:
            free.append(slot)  # nobody reads it (a dead node): its slot is free at once
    return slot_of, sizes


def nbytes_of(shapes: dict[str, tuple], itemsizes: dict[str, int]) -> dict[str, int]:
    return {name: prod(shapes[name]) * size for name, size in itemsizes.items()}
