"""Small onnx-graphsurgeon helpers the fold shares: constant values (read without caching a
copy), replacing a weight, readers, reshape targets, layout round trips, fresh names."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output; None for a variable. An
    initializer's weights are read afresh each time, never cached (its TensorProto keeps them;
    see weights.py)."""
    import onnx_graphsurgeon as gs  # (here, not at import: `unfold rules` needs no onnx)

    if isinstance(tensor, gs.Constant):
        values = tensor._values  # noqa: SLF001 - .values would cache a copy of every weight
        return values.load() if isinstance(values, gs.ir.tensor.LazyValues) else \
            np.asarray(values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def constant_operand(node: gs.Node) -> tuple[int, np.ndarray] | None:
    """(slot, value) of the one constant operand of a two-input node (a Mul by a constant, a
    bias Add); None where it has not exactly one. Every "is it an op by a constant" asks this."""
    if len(node.inputs) != 2:
        return None
    values = [constant_value(t) for t in node.inputs]
    if (values[0] is None) == (values[1] is None):
        return None
    slot = 0 if values[0] is not None else 1
    value = values[slot]
    assert value is not None
    return slot, value


def replace_weight(node: gs.Node, slot: int, value: np.ndarray, names: Names) -> None:
    """node.inputs[slot] = a new constant holding `value`, named after the one it replaces.
    The replaced constant lets its values go when no node reads it any more: onnx-graphsurgeon
    tensors sit in reference cycles, so a replaced weight would otherwise stay in memory until
    Python's next full garbage collection (a post-norm fold replaces nearly every weight)."""
    import onnx_graphsurgeon as gs  # (here, not at import: `unfold rules` needs no onnx)

    old = node.inputs[slot]
    node.inputs[slot] = gs.Constant(names.new(old.name), value)
    if isinstance(old, gs.Constant) and not old.outputs:
        old.values = np.empty(0, dtype=old.dtype)


def is_floating(dtype: np.dtype) -> bool:
    """A floating type, bfloat16 and the float8s included (ml_dtypes' types, which numpy does
    not count as np.floating: their kind is 'V')."""
    dtype = np.dtype(dtype)
    return np.issubdtype(dtype, np.floating) or dtype.name.startswith(("bfloat16", "float8"))


# ops that read only a tensor's shape: a per-channel affine does not change what they see
SHAPE_READERS = frozenset({"Shape", "Size"})


def redirect_readers(old: gs.Tensor, new: gs.Tensor) -> None:
    """Every node that reads `old` reads `new` there instead."""
    for reader in list(old.outputs):
        for slot, tensor in enumerate(reader.inputs):
            if tensor is old:
                reader.inputs[slot] = new


def bypass(node: gs.Node, source: gs.Tensor) -> None:
    """`node`'s readers read `source` instead of its (one) output, and `node` is unplugged:
    the cleanup that follows removes it."""
    redirect_readers(node.outputs[0], source)
    node.outputs.clear()
    node.inputs.clear()


def value_readers(tensor: gs.Tensor) -> list[gs.Node]:
    """The nodes that read `tensor`'s values (not just its shape)."""
    return [n for n in tensor.outputs if n.op not in SHAPE_READERS]


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
