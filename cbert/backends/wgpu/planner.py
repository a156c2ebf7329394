"""Activation buffers planned by lifetime, for the shapes of one shape class.

The plan is made once per shape class, at the class's capacity: every (batch, seq) of the
class fits in the same buffers, so a new sequence length reuses them instead of allocating.
Shapes come from :func:`cbert.ir.infer_shapes`, lifetimes from :func:`cbert.ir.free_after`.
"""

from __future__ import annotations

from math import prod

from ...ir import Graph, Op, free_after, infer_shapes


def token_shapes(graph: Graph, param_shapes: dict[str, tuple], batch: int, seq: int) -> dict[str, tuple]:
    """Every value's shape when each runtime input is [batch, seq]."""
    return infer_shapes(graph, param_shapes, {name: (batch, seq) for name in graph.inputs})


def value_itemsize(graph: Graph, itemsize: int) -> dict[str, int]:
    """Bytes per element of each node output: the additive mask stays f32 in every dtype."""
    return {n.output: 4 if n.op is Op.MASK_BIAS else itemsize for n in graph.nodes}


def assign_slots(graph: Graph, nbytes: dict[str, int]) -> tuple[dict[str, int], list[int]]:
    """Map each node output to a reusable slot; returns (slot of value, bytes of each slot).

    A value's slot returns to the pool once the value is dead (graph outputs never are: they
    are copied back after the last dispatch). A node's output takes its slot before its
    inputs' slots return, so no kernel writes where it reads. Best fit first, else grow the largest.
    """
    slot_of: dict[str, int] = {}
    sizes: list[int] = []
    free: list[int] = []
    for n, dead in zip(graph.nodes, free_after(graph)):
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
        free += [slot_of[name] for name in dead]
    return slot_of, sizes


def nbytes_of(shapes: dict[str, tuple], itemsizes: dict[str, int]) -> dict[str, int]:
    return {name: prod(shapes[name]) * size for name, size in itemsizes.items()}
