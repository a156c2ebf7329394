"""The compiled forward: weights on the device, buffers per shape class, one submit per call.

At compile: parameters are uploaded (once per backend, shared by every graph of a model)
and every pipeline the graph needs is compiled. Pipelines and shader modules depend on the
model's sizes only, never on (batch, seq), which reach the kernels as uniforms: no later
forward makes one, whatever its shape. Per shape class (batch and seq rounded up to powers
of two): activation slots planned by lifetime, an inputs buffer, a uniform buffer and a
persistent MAP_READ buffer, all created once. Per exact (batch, seq): the dispatch list
with its bind groups and uniform bytes, built once and kept while it is among the
``MAX_PLANS`` most recently used (callers pad to sequence buckets, so a workload meets a
handful; a server fed every length must not grow without bound). A forward then writes
the inputs (and the uniforms when the shape changed), records one compute pass and the
copies of the requested outputs, submits once and maps the read-back buffer.

Those buffers are shared by every forward of a shape class, so one lock per executable
spans the planning and everything from the first write to the end of the read-back;
packing the inputs and converting the outputs run outside it (see :class:`WgpuBackend`).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from math import prod

import numpy as np
import wgpu

from ...ir import Graph, fold_constants
from .kernels import PARAMS_BYTES
from .lowering import Lowering
from .planner import assign_slots, nbytes_of, token_shapes


class Concat:
    """A CONCAT folded at load, kept lazy so the backend can cache its upload by its parts."""

    def __init__(self, arrays, axis):
        self.arrays, self.axis = list(arrays), axis
        self.shape = np.broadcast_shapes(*(a.shape[:axis] for a in arrays)) + (
            sum(a.shape[axis] for a in arrays),) + tuple(arrays[0].shape[axis + 1:])

    def materialise(self) -> np.ndarray:
        return np.concatenate([np.asarray(a, np.float32) for a in self.arrays], axis=self.axis)


# Dispatch lists kept per executable (least recently used dropped first): a list is rebuilt in
# milliseconds, and its bind groups hold no memory of their own.
MAX_PLANS = 64


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass
class Arena:
    """Buffers of one shape class, reused by every forward whose shape falls in it."""

    slots: list
    slot_of: dict
    inputs: object
    uniforms: object
    readback: object
    uniforms_for: tuple | None = None


@dataclass
class Plan:
    arena: Arena
    dispatches: list  # (pipeline, bind group, grid)
    uniforms: bytes
    copies: list  # (source buffer, destination offset, bytes)
    outputs: dict  # user name -> (destination offset, shape)
    read_bytes: int


class WgpuExecutable:
    def __init__(self, backend, graph: Graph, params: dict):
        self.backend, self.gpu = backend, backend.gpu
        self.graph, folded = fold_constants(graph, params, Concat)
        self.itemsize = 2 if backend.dtype == "float16" else 4
        self.np_dtype = np.float16 if backend.dtype == "float16" else np.float32
        self.params = {name: backend.param_buffer(name, folded[name]) for name in self.graph.params}
        self.param_shapes = {name: tuple(folded[name].shape) for name in self.graph.params}
        limits = self.gpu.limits
        self.lowering = Lowering(self.graph, self.param_shapes, self.itemsize, self.gpu.max_binding,
                                 self.gpu.storage_align, int(limits["max-compute-workgroup-storage-size"]))
        self.itemsizes = self.lowering.value_itemsizes
        self.arenas: dict[tuple, Arena] = {}
        self.plans: OrderedDict[tuple, Plan] = OrderedDict()  # (batch, seq) -> its dispatch list; LRU order
        self.lock = threading.Lock()  # held by one forward at a time: its arena's buffers are shared
        self._ustride = -(-PARAMS_BYTES // self.gpu.uniform_align) * self.gpu.uniform_align
        # Every pipeline a forward of any shape can pick (each GEMM in each row tile), made now.
        # No warm-up forward: it made a shape class's buffers no later forward used and cost a
        # whole forward (on lavapipe, which compiles when the pipeline is made, seconds of a
        # one-shot `cbert embed`); a driver that finishes compiling at first use does so in the
        # first real forward instead.
        for k in self.lowering.warm_kernels(token_shapes(self.graph, self.param_shapes, 1, 1)):
            self._pipeline(k)

    def _pipeline(self, k):
        return self.gpu.pipeline(k.file, k.entry, self.backend.dtype, k.consts, k.overrides, k.bindings)

    # -- per shape class and per shape -----------------------------------------------------

    def _arena(self, batch: int, seq: int) -> tuple[tuple, Arena]:
        key = (_pow2(batch), _pow2(seq))
        if key not in self.arenas:
            B, S = key
            shapes = token_shapes(self.graph, self.param_shapes, B, S)
            nbytes = nbytes_of(shapes, self.itemsizes)
            slot_of, sizes = assign_slots(self.graph, nbytes)
            use = wgpu.BufferUsage
            slots = [self.gpu.buffer(size, use.STORAGE | use.COPY_SRC, f"activation slot {i}")
                     for i, size in enumerate(sizes)]
            n_dispatch = len(self.lowering.lower(shapes))
            arena = Arena(
                slots=slots, slot_of=slot_of,
                inputs=self.gpu.buffer(len(self.graph.inputs) * B * S * 4, use.STORAGE | use.COPY_DST, "inputs"),
                uniforms=self.gpu.buffer(n_dispatch * self._ustride, use.UNIFORM | use.COPY_DST, "uniforms"),
                readback=self.gpu.buffer(self._read_layout(shapes)[1], use.MAP_READ | use.COPY_DST, "read-back"))
            self.arenas[key] = arena
        return key, self.arenas[key]

    def _read_layout(self, shapes: dict) -> tuple[dict, int]:
        """Offset of each requested value in the read-back buffer (8-aligned, as mapping needs), and the total."""
        offsets, total = {}, 0
        for value in dict.fromkeys(self.graph.outputs.values()):
            offsets[value] = total
            total += -(-prod(shapes[value]) * self.itemsizes[value] // 8) * 8
        return offsets, total

    def _plan(self, batch: int, seq: int) -> Plan:
        if (batch, seq) in self.plans:
            self.plans.move_to_end((batch, seq))
            return self.plans[(batch, seq)]
        _, arena = self._arena(batch, seq)
        shapes = token_shapes(self.graph, self.param_shapes, batch, seq)
        buffers = {"value": lambda n: arena.slots[arena.slot_of[n]], "param": self.params.__getitem__,
                   "inputs": lambda _: arena.inputs}
        dispatches, uniforms = [], bytearray()
        for i, d in enumerate(self.lowering.lower(shapes)):
            pipeline, layout = self._pipeline(d.kernel)
            entries = [{"binding": 0, "resource": {"buffer": arena.uniforms, "offset": i * self._ustride,
                                                   "size": PARAMS_BYTES}}]
            for binding, ((kind, name), offset, size) in sorted(d.views.items()):
                entries.append({"binding": binding, "resource": {"buffer": buffers[kind](name), "offset": offset,
                                                                 "size": size}})
            dispatches.append((pipeline, self.gpu.bind_group(layout, entries), d.grid))
            uniforms += d.uniforms().ljust(self._ustride, b"\0")
        offsets, total = self._read_layout(shapes)
        copies = [(arena.slots[arena.slot_of[v]], off, -(-prod(shapes[v]) * self.itemsizes[v] // 4) * 4)
                  for v, off in offsets.items()]
        outputs = {name: (offsets[v], shapes[v], self.itemsizes[v]) for name, v in self.graph.outputs.items()}
        plan = Plan(arena, dispatches, bytes(uniforms), copies, outputs, total)
        self.plans[(batch, seq)] = plan
        if len(self.plans) > MAX_PLANS:
            self.plans.popitem(last=False)
        return plan

    # -- the forward -----------------------------------------------------------------------

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        gpu, t0 = self.gpu, time.perf_counter()
        batch, seq = np.shape(inputs["input_ids"])
        packed = np.stack([np.broadcast_to(inputs[n], (batch, seq)) for n in self.graph.inputs]).astype(np.int32)
        with self.lock:
            before = (gpu.buffers_created, gpu.pipelines_created, gpu.bind_groups_created)
            plan = self._plan(batch, seq)
            raw, uploaded = self._run(plan, batch, seq, packed)
            created = (gpu.buffers_created - before[0], gpu.pipelines_created - before[1],
                       gpu.bind_groups_created - before[2])
        result = {}
        for name, (offset, shape, itemsize) in plan.outputs.items():
            dtype = np.float32 if itemsize == 4 else self.np_dtype
            a = np.frombuffer(raw, dtype, prod(shape), offset).reshape(shape)
            result[name] = a.astype(np.float32)  # a copy: the caller owns it, writable
        self.backend.record({
            "submits": 1, "dispatches": len(plan.dispatches), "command_encoders": 1, "compute_passes": 1,
            "buffers_created": created[0], "pipelines_created": created[1], "bind_groups_created": created[2],
            "bytes_read_back": sum(size for _, _, size in plan.copies), "bytes_uploaded": uploaded,
            "batch": batch, "seq": seq, "shape_class": (_pow2(batch), _pow2(seq)), "dtype": self.backend.dtype,
            "wall_ms": (time.perf_counter() - t0) * 1e3,
        })
        return result

    def _run(self, plan: Plan, batch: int, seq: int, packed: np.ndarray) -> tuple[bytes, int]:
        """Write, submit once, read back: the bytes of the requested outputs and the bytes uploaded.

        The caller holds the lock: the arena's buffers serve every forward of the shape class.
        """
        arena, device = plan.arena, self.gpu.device
        uploaded = 0
        if arena.uniforms_for != (batch, seq):  # another shape of the class ran last
            device.queue.write_buffer(arena.uniforms, 0, plan.uniforms)
            arena.uniforms_for, uploaded = (batch, seq), len(plan.uniforms)
        device.queue.write_buffer(arena.inputs, 0, packed)
        uploaded += packed.nbytes
        encoder = device.create_command_encoder()
        cpass = encoder.begin_compute_pass()
        for pipeline, bind_group, grid in plan.dispatches:
            cpass.set_pipeline(pipeline)
            cpass.set_bind_group(0, bind_group)
            cpass.dispatch_workgroups(*grid)
        cpass.end()
        for source, offset, size in plan.copies:
            encoder.copy_buffer_to_buffer(source, 0, arena.readback, offset, size)
        device.queue.submit([encoder.finish()])
        arena.readback.map_sync(wgpu.MapMode.READ, 0, plan.read_bytes)
        try:
            return arena.readback.read_mapped(0, plan.read_bytes, copy=True), uploaded
        finally:
            arena.readback.unmap()
