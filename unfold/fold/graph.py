"""Small onnx-graphsurgeon helpers the fold rules share: constant values, per-channel
constants, consumers, fresh initializer names."""

from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output; None for a variable. An
    initializer's weights are read afresh each time, never cached (its TensorProto keeps them;
    see weights.py)."""
    if isinstance(tensor, gs.Constant):
        values = tensor._values  # noqa: SLF001 - .values would cache a copy of every weight
        return values.load() if isinstance(values, LazyValues) else np.asarray(values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def replace_weight(node: gs.Node, slot: int, value: np.ndarray, names: Names) -> None:
    """node.inputs[slot] = a new constant holding `value`, named after the one it replaces.
    The replaced constant lets its values go when no node reads it any more: onnx-graphsurgeon
    tensors sit in reference cycles, so a replaced weight would otherwise stay in memory until
    Python's next full garbage collection (a post-norm fold replaces nearly every weight)."""
    old = node.inputs[slot]
    node.inputs[slot] = gs.Constant(names.new(old.name), value)
    if isinstance(old, gs.Constant) and not old.outputs:
        old.values = np.empty(0, dtype=old.dtype)


# ops that read only a tensor's shape: a per-channel affine does not change what they see
SHAPE_READERS = frozenset({"Shape", "Size"})


def value_readers(tensor: gs.Tensor) -> list[gs.Node]:
    """The nodes that read `tensor`'s values (not just its shape)."""
    return [n for n in tensor.outputs if n.op not in SHAPE_READERS]


def per_channel_constant(value: np.ndarray | None, data_rank: int | None) -> np.ndarray | None:
    """`value` as a (C,) vector when it broadcasts along the LAST axis only (shape (C,) or
    (1, ..., 1, C), or a scalar, returned as shape (1,)); None otherwise."""
    if value is None or not np.issubdtype(value.dtype, np.floating):
        return None
    if value.ndim == 0:
        return value.reshape(1)
    if data_rank is not None and value.ndim > data_rank:
        return None
    if all(d == 1 for d in value.shape[:-1]):
        return value.reshape(-1)
    return None


def place_affine_after(node: gs.Node, scale: np.ndarray, shift: np.ndarray, dtype: np.dtype,
                       graph: gs.Graph, names: Names, base: str) -> list[gs.Node]:
    """Make `node` produce x and add y = scale⊙x + shift (one Mul, one Add; either left out
    when it is the identity) producing the tensor `node` produced before. Returns the nodes."""
    out = node.outputs[0]
    if np.all(scale == 1.0) and np.all(shift == 0.0):
        return []
    current = gs.Variable(names.new(out.name), dtype=out.dtype, shape=out.shape)
    node.outputs[0] = current
    return emit_affine(current, out, scale, shift, dtype, graph, names, base)


def emit_affine(source: gs.Tensor, out: gs.Tensor, scale: np.ndarray, shift: np.ndarray,
                dtype: np.dtype, graph: gs.Graph, names: Names, base: str) -> list[gs.Node]:
    """Nodes computing out = scale⊙source + shift: one Mul and one Add, either left out when
    it is the identity (an Identity when both are)."""
    ops = [(op, v) for op, v, neutral in (("Mul", scale, 1.0), ("Add", shift, 0.0))
           if np.any(v != neutral)]
    if not ops:
        node = gs.Node("Identity", names.new(base), inputs=[source], outputs=[out])
        graph.nodes.append(node)
        return [node]
    current = source
    new_nodes = []
    for i, (op, value) in enumerate(ops):
        result = out if i == len(ops) - 1 else gs.Variable(
            names.new(out.name), dtype=out.dtype, shape=out.shape)
        constant = gs.Constant(names.new(f"{base}_{op.lower()}"), value.astype(dtype))
        new_nodes.append(gs.Node(op, names.new(f"{base}_{op.lower()}"),
                                 inputs=[current, constant], outputs=[result]))
        current = result
    graph.nodes.extend(new_nodes)
    return new_nodes


def matching_axis(source: object, target: object, axis: int) -> int | None:
    """The axis of shape `target` that holds, element for element, axis `axis` of shape
    `source` when a Reshape turns one into the other: the same dims up to and including it
    (named dims included), or the same size and the same (static) number of elements after
    it. None when there is none (the axis is split or merged)."""
    if not isinstance(source, (list, tuple)) or not isinstance(target, (list, tuple)):
        return None
    head = list(source[:axis + 1])
    if len(target) > axis and list(target[:axis + 1]) == head and None not in head:
        return axis  # the same dims up to it (symbols included): the same axis
    size, tail = source[axis], source[axis + 1:]
    if not isinstance(size, int) or not all(isinstance(d, int) for d in tail):
        return None
    inner = int(np.prod(tail, dtype=np.int64))
    for j, other in enumerate(target):
        rest = target[j + 1:]
        if other == size and all(isinstance(d, int) for d in rest) and \
                int(np.prod(rest, dtype=np.int64)) == inner:
            return j
    return None


# ops that move data around without mixing it: a channel axis can be followed through them
LAYOUT_OPS = frozenset({"Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def channel_axis_across(node: gs.Node, axis: int, *, forward: bool) -> int | None:
    """Where a layout op puts axis `axis`: of its output, given the axis of its input
    (`forward`), or of its input, given the axis of its output. None when the axis does not
    survive whole (or a shape is unknown)."""
    before, after = (getattr(node.inputs[0], "shape", None),
                     getattr(node.outputs[0], "shape", None))
    if node.op == "Identity":
        return axis
    if node.op == "Transpose":
        if not isinstance(before, (list, tuple)):
            return None
        perm = [int(p) for p in node.attrs.get("perm", reversed(range(len(before))))]
        return perm.index(axis) if forward else perm[axis]
    return matching_axis(before, after, axis) if forward else \
        matching_axis(after, before, axis)


def reshape_last_dim(node: gs.Node) -> int | None:
    """The last dim of a Reshape's output, where it is known: from a constant target, from
    shape inference, or from torch's flatten idiom, which targets Concat(Shape(x)[:k], [-1]),
    making it the product of x's (static) dims from k on. (The Shape may read another tensor
    of x's shape: the fold points Shape readers past the affines it moves.)"""
    target = constant_value(node.inputs[1])
    if target is not None and target.size and int(target.reshape(-1)[-1]) > 0:
        return int(target.reshape(-1)[-1])
    out_shape = getattr(node.outputs[0], "shape", None)
    if out_shape and isinstance(out_shape[-1], int):
        return out_shape[-1]
    concat = node.inputs[1].inputs[0] if len(node.inputs[1].inputs) == 1 else None
    if concat is None or concat.op != "Concat" or len(concat.inputs) != 2:
        return None
    head, tail = concat.inputs
    slice_ = head.inputs[0] if len(head.inputs) == 1 else None
    tail_value = constant_value(tail)
    if slice_ is None or slice_.op != "Slice" or tail_value is None or \
            tail_value.reshape(-1).tolist() != [-1] or len(slice_.inputs) not in (3, 4):
        return None
    shape_op = slice_.inputs[0].inputs[0] if len(slice_.inputs[0].inputs) == 1 else None
    starts, ends = constant_value(slice_.inputs[1]), constant_value(slice_.inputs[2])
    axes = constant_value(slice_.inputs[3]) if len(slice_.inputs) == 4 else None
    in_shape = getattr(node.inputs[0], "shape", None)
    if shape_op is None or shape_op.op != "Shape" or in_shape is None or \
            list(getattr(shape_op.inputs[0], "shape", None) or []) != list(in_shape) \
            or shape_op.attrs.get("start", 0) != 0 or "end" in shape_op.attrs or \
            starts is None or ends is None or starts.reshape(-1).tolist() != [0] or \
            (axes is not None and axes.reshape(-1).tolist() != [0]):
        return None
    k = int(ends.reshape(-1)[0])
    if not 0 <= k < len(in_shape) or None in list(in_shape[:k]):
        return None  # (an unknown dim is no proof that the two shapes agree)
    rest = in_shape[k:]
    return int(np.prod(rest)) if all(isinstance(d, int) for d in rest) else None


def bias_add(matmul: gs.Node, graph_outputs: set[str]) -> tuple[gs.Node, int] | None:
    """The Add(c) that follows a MatMul as the only reader of its values, with c a (C_out,)
    constant, as (the Add, the slot of c)."""
    out = matmul.outputs[0]
    readers = value_readers(out)
    if out.name in graph_outputs or len(readers) != 1 or readers[0].op != "Add":
        return None
    add = readers[0]
    for index, tensor in enumerate(add.inputs):
        value = constant_value(tensor)
        if tensor is not out and value is not None and value.ndim == 1:
            return add, index
    return None


RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def is_round_trip(first: gs.Node, second: gs.Node) -> bool:
    """second(first(x)) == x: two Transposes whose perms compose to the identity, or two
    reshaping ops (Reshape, Flatten, Squeeze, Unsqueeze) that bring back x's own shape (every
    dim known: static, or the same named dim)."""
    if not first.inputs or not second.outputs or first.outputs[0] is not second.inputs[0]:
        return False
    return undoes(second, first)


def undoes(second: gs.Node, first: gs.Node) -> bool:
    """Applied after `first` (whatever lies between them keeps the shape), `second` gives back
    `first`'s input: inverse Transposes, or reshapes back to its (known) shape."""
    if not first.inputs or not second.outputs:
        return False
    x, y = first.inputs[0], second.outputs[0]
    r = rank(x)
    if r is None:
        return False
    if first.op == second.op == "Transpose":
        p1 = list(first.attrs.get("perm", reversed(range(r))))
        p2 = list(second.attrs.get("perm", reversed(range(r))))
        return [p1[i] for i in p2] == list(range(r))
    if first.op in RESHAPES and second.op in RESHAPES:
        before, after = getattr(x, "shape", None), getattr(y, "shape", None)
        # (a named dim, "batch" or shape inference's "unk__3", is one value wherever it
        # appears: inference names two dims alike only when it knows they are equal)
        return before is not None and after is not None and \
            all(isinstance(d, (int, str)) for d in before) and list(before) == list(after)
    return False


def rank(tensor: gs.Tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return len(shape) if shape is not None else None


class Names:
    """Unique names for new initializers (never overwrite one another node reads)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.taken = {t for t in graph.tensors()} | {n.name for n in graph.nodes}
        self._counter = itertools.count()

    def new(self, base: str) -> str:
        while True:
            name = f"{base}_unfold{next(self._counter)}"
            if name not in self.taken:
                self.taken.add(name)
                return name
