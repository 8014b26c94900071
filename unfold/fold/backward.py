"""Backward: make a tensor hold A(its value) by changing the constants that produce it, so an
affine that would sit after it can go (DESIGN.md rules 2, 5 and 6).

    producer linear (rule 2):  A(x ⊛ W + c) = x ⊛ (W·s) + (s⊙c + b)     MatMul/Gemm/Conv, W
                               scaled along its output channels (exact for any Conv padding:
                               the affine acts on the output); a MatMul without a bias takes
                               the scale only and the shift stays for the caller
    embedding tables (rule 6): A(T[ids] + P) = (s⊙T + b)[ids] + s⊙P
    through the way there:     layout ops (the affine mapped back), a bias or other constant
                               Add/Sub (it takes the shift), an Add of two (each part the
                               scale, one the shift), a constant Mul (s⊙k), torch.roll's
                               Slice/Slice/Concat (the affine is the same on every part)

`request(tensor, affine, readers)` plans it: every tensor on the way must be read by nothing
but the way (nothing else may see the scaled values) and be no graph output. Used for a site's
own affine (into its producer or its embedding tables), for the residual rule's division of a
branch by the stream's scale (rule 5), and nothing else. Walks are cut at `MAX_STEPS` nodes so
the whole pass stays linear in the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from unfold.fold.algebra import (
    Affine,
    ChannelAffine,
    FoldRejected,
    broadcasts_within,
    fold_into_producer,
    max_abs,
    reshape_constant,
    rows_affine,
    squeeze_constant,
    transpose_constant,
    unsqueeze_constant,
)
from unfold.fold.flow import Context, Pending, Rewrite, ints, named, quoted

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

PRODUCER = "producer"
EMBEDDING = "embedding"
MAX_STEPS = 48
LAYOUT = frozenset({"Identity", "Dropout", "Transpose", "Reshape", "Flatten", "Squeeze",
                    "Unsqueeze"})

Action = Callable[[Rewrite], None]


@dataclass
class Request:
    """The plan: `actions` change constants in the rewrite pass (each reads the current value
    when it runs); `takes_shift` False when only the scale found a place."""

    actions: list[Action] = field(default_factory=list)
    absorbed_by: list[str] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    takes_shift: bool = True
    rule: str = PRODUCER

    def apply(self, rw: Rewrite, _: dict[int, Pending] | None = None) -> None:
        for action in self.actions:
            action(rw)

    @property
    def event(self) -> str:
        if self.rule == EMBEDDING:
            tables = ", ".join(f"'{name}'" for name in self.absorbed_by)
            return f"folded into the embedding tables {tables}"
        return "; ".join(p for p in self.path if p.startswith(("folded into", "its shift"))) \
            or "; ".join(self.path)


class Refusal(str):
    """Why there is no plan; `deep` when a producer or table was reached and could not take it
    (worth reporting), not when the way there was blocked (a fork, a graph input)."""

    deep: bool = False


class _Refused(Exception):
    def __init__(self, reason: str, deep: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.deep = deep


def _deep(reason: str) -> _Refused:
    return _Refused(reason, deep=True)


def request(tensor: gs.Tensor, affine: Affine, readers: Collection[gs.Node], ctx: Context,
            *, want_shift: bool = True) -> Request | Refusal:
    """A plan making `tensor` hold affine(tensor), or the reason there is none."""
    plan = Request()
    try:
        plan.takes_shift = _request(tensor, affine, readers, ctx, plan, [0], want_shift)
    except _Refused as refused:
        refusal = Refusal(refused.reason)
        refusal.deep = refused.deep
        return refusal
    return plan


def _step(counter: list[int]) -> None:
    counter[0] += 1
    if counter[0] > MAX_STEPS:
        raise _Refused(f"no producer that can take it within {MAX_STEPS} ops")


def _as(value: np.ndarray, rank: int) -> np.ndarray:
    return value.reshape((1,) * (rank - value.ndim) + value.shape) if value.ndim < rank \
        else value


def _replace_constant(node: gs.Node, slot: int, affine: Affine, value: np.ndarray,
                      plan: Request, shift: bool, bound: list | None = None) -> None:
    """node.inputs[slot] (a constant of the data's rank or less) becomes affine(value). It
    keeps its shape, or, for an elementwise op's operand, may grow within `bound` (the op's
    output shape: a scalar α·x becoming a per-channel vector)."""
    rank = affine.rank
    full = _as(np.asarray(value, dtype=np.float64), rank)
    new = full * affine.scale + (affine.shift if shift else 0.0)
    if new.shape != full.shape and not (bound is not None and broadcasts_within(new, bound)):
        raise _Refused("the affine would broadcast a constant to a larger shape")
    dtype = value.dtype
    final = new.reshape(value.shape) if new.size == value.size else new

    def act(rw: Rewrite) -> None:
        rw.replace_input(node, slot, final.astype(dtype))

    plan.actions.append(act)


def _request(tensor: gs.Tensor, affine: Affine, readers: Collection[gs.Node], ctx: Context,
             plan: Request, counter: list[int], want_shift: bool) -> bool:
    """Plan it; True when the shift found a place too (False: the scale only)."""
    if affine.is_identity():
        return True  # nothing to change
    _step(counter)
    # a norm the analysis already sent back into its producer: its input stands for it now
    # (read by what read the norm's output: Context.value_readers counts those)
    tensor = ctx.resolve(tensor)
    if not ctx.read_only_by(tensor, readers):
        what = "a graph output" if ctx.is_output(tensor) else "read by other ops too"
        raise _Refused(f"'{tensor.name}' is {what}")
    value = ctx.constant(tensor)
    if value is not None:  # a constant: replaced by affine(constant) where it is read
        if len(readers) != 1:
            raise _Refused(f"the constant '{tensor.name}' is read by several ops")
        (reader,) = readers
        for slot, t in enumerate(reader.inputs):
            if t is tensor:
                _replace_constant(reader, slot, affine, value, plan, shift=want_shift)
        return want_shift and affine.has_shift
    producer = ctx.producer(tensor)
    if producer is None:
        raise _Refused(f"'{tensor.name}' is a graph input")
    if id(producer) in ctx.site_nodes:  # a norm of its own: the pass moves it, not this
        raise _Refused(f"it comes from the norm {named(producer)}")
    op = producer.op
    rank = affine.rank
    what = f"{op} '{producer.name}'"
    if op in LAYOUT:
        return _through_layout(producer, affine, ctx, plan, counter, want_shift)
    if op in ("Add", "Sub") and len(producer.inputs) == 2:
        return _through_add(producer, affine, ctx, plan, counter, want_shift)
    if op == "Mul" and len(producer.inputs) == 2:
        for slot in (0, 1):
            k = ctx.constant(producer.inputs[slot])
            if k is not None:  # A(x⊙k) = x⊙(s⊙k) + b: the constant takes the scale only
                _replace_constant(producer, slot, Affine(affine.scale, np.zeros(1)), k, plan,
                                  shift=False, bound=ctx.shape(producer.outputs[0]))
                plan.path.append(f"into the constant of {what}")
                return False
        raise _Refused(f"{what} multiplies two variables")
    if op == "Expand":
        value = ctx.constant(producer.inputs[0])
        if value is None:
            raise _Refused(f"{what} expands a variable")
        _replace_constant(producer, 0, affine, value, plan, shift=want_shift)
        return want_shift and affine.has_shift
    if op in ("MatMul", "Gemm", "Conv"):
        if PRODUCER in ctx.skip:
            raise _Refused(f"rule '{PRODUCER}' is skipped")
        return _into_linear(producer, affine, ctx, plan, want_shift)
    if op == "Gather":
        shape = ctx.constant_shape(producer.inputs[0])
        if shape is not None:
            return _into_table(producer, shape, affine, ctx, plan, want_shift)
    if op == "Concat":
        return _through_concat(producer, affine, ctx, plan, counter, want_shift)
    if op == "Slice":
        axes = _slice_axes(producer, ctx)
        if axes is None or {a % rank for a in axes} & affine.varying_axes():
            raise _Refused(f"{what} cuts along an axis the affine varies along")
        return _request(producer.inputs[0], affine, [producer], ctx, plan, counter, want_shift)
    if op == "Pad":
        return _through_pad(producer, affine, ctx, plan, counter, want_shift)
    raise _Refused(f"it comes from {what}, which cannot take a scale")


def _through_layout(node: gs.Node, affine: Affine, ctx: Context, plan: Request,
                    counter: list[int], want_shift: bool) -> bool:
    source = node.inputs[0]
    op = node.op
    mapped: Affine | None
    if op in ("Identity", "Dropout"):
        if op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
            raise _Refused(f"the mask of Dropout '{node.name}' is read")
        mapped = affine
    elif op == "Transpose":
        perm = node.attrs.get("perm", list(reversed(range(affine.rank))))
        inverse = list(np.argsort(perm))
        mapped = affine.map(lambda v, _: transpose_constant(v, inverse))
    elif op in ("Reshape", "Flatten"):
        before, after = ctx.shape(source), ctx.shape(node.outputs[0])
        mapped = affine.map(lambda v, _: reshape_constant(v, after, before))
    elif op == "Squeeze":
        axes = ints(node, "axes", 1, ctx)
        shape = ctx.shape(source)
        if not axes and shape is not None and all(isinstance(d, int) for d in shape):
            axes = [a for a, d in enumerate(shape) if d == 1]
        mapped = affine.map(lambda v, _: unsqueeze_constant(v, axes)) if axes else None
    else:  # Unsqueeze
        axes = ints(node, "axes", 1, ctx)
        mapped = affine.map(lambda v, _: squeeze_constant(v, axes)) if axes else None
    if mapped is None:
        raise _Refused(f"the affine cannot be followed back through {op} '{node.name}'")
    return _request(source, mapped, [node], ctx, plan, counter, want_shift)


def _through_add(node: gs.Node, affine: Affine, ctx: Context, plan: Request,
                 counter: list[int], want_shift: bool) -> bool:
    """A(u ± c) with c constant: c takes the shift; A(u + v): u and v both take the scale,
    one of them the shift (an embedding sum: the token table)."""
    sign = -1.0 if node.op == "Sub" else 1.0
    scale_only = Affine(affine.scale, np.zeros(1))
    for slot in (0, 1):
        c = ctx.constant(node.inputs[slot])
        if c is None:
            continue
        data = node.inputs[1 - slot]
        # A(x + c) = s⊙x + (s⊙c + b); A(x − c) = s⊙x − (s⊙c − b); A(c − x) = (s⊙c + b) − s⊙x
        const_affine = Affine(affine.scale, affine.shift * (sign if slot == 1 else 1.0))
        _replace_constant(node, slot, const_affine, c, plan, shift=want_shift,
                          bound=ctx.shape(node.outputs[0]))
        _request(data, scale_only, [node], ctx, plan, counter, False)
        plan.path.append(f"its shift into the constant of {named(node)}")
        return want_shift and affine.has_shift
    if node.inputs[0] is node.inputs[1]:
        raise _Refused(f"{named(node)} reads one tensor twice")
    if not want_shift or not affine.has_shift:
        for slot in (0, 1):
            _request(node.inputs[slot], scale_only, [node], ctx, plan, counter, False)
        return False
    # one part takes the shift: try the first, then the second
    first_error = None
    for shifted in (0, 1):
        trial = Request(rule=plan.rule)
        try:
            signed = Affine(affine.scale, affine.shift * (sign if shifted == 1 else 1.0))
            took = _request(node.inputs[shifted], signed, [node], ctx, trial, counter, True)
            if not took:
                continue
            _request(node.inputs[1 - shifted], scale_only, [node], ctx, trial, counter, False)
        except _Refused as refused:
            first_error = first_error or refused.reason
            continue
        plan.actions += trial.actions
        plan.absorbed_by += trial.absorbed_by
        plan.path += trial.path
        plan.rule = trial.rule
        return True
    if first_error is not None:
        raise _Refused(first_error)
    for slot in (0, 1):  # neither can take the shift: the scale only
        _request(node.inputs[slot], scale_only, [node], ctx, plan, counter, False)
    return False


def _into_linear(node: gs.Node, affine: Affine, ctx: Context, plan: Request,
                 want_shift: bool) -> bool:
    op, what = node.op, named(node)
    rank = affine.rank
    weight_shape = ctx.constant_shape(node.inputs[1])  # (the values only in the rewrite)
    if weight_shape is None:
        raise _deep(f"its producer {what} has no constant weight")
    if op == "Conv":
        axis, out_axis, channels = 1, 0, weight_shape[0]
        has_bias_slot, can_add_bias = len(node.inputs) > 2, True
        if has_bias_slot and ctx.constant(node.inputs[2]) is None:
            raise _deep(f"its producer {what} has a non-constant bias")
    elif op == "MatMul":
        if len(weight_shape) != 2:
            raise _deep(f"its producer {what} has no 2-D weight")
        axis, out_axis, channels = rank - 1, 1, weight_shape[1]
        has_bias_slot, can_add_bias = False, False
    else:  # Gemm
        if node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0:
            raise _deep(f"its producer {what} has alpha/beta other than 1")
        trans_b = bool(node.attrs.get("transB", 0))
        axis, out_axis = 1, 0 if trans_b else 1
        channels = weight_shape[out_axis]
        has_bias_slot, can_add_bias = len(node.inputs) > 2, True
        if has_bias_slot:
            bias = ctx.constant(node.inputs[2])
            if bias is None or bias.ndim > 1:
                raise _deep(f"its producer {what} has a C that is not a constant vector")
    scale = affine.scale_vector(axis, channels)
    shift = affine.shift_vector(axis, channels) if affine.has_shift else np.zeros(channels)
    if scale is None:
        raise _deep(f"its producer {what} has its channels on axis {axis}, which is not "
                       f"the only axis the scale varies along")
    takes_shift = want_shift and affine.has_shift and can_add_bias and shift is not None
    if want_shift and affine.has_shift and shift is None:
        raise _deep(f"the shift varies along more than the channels of {what}")
    use_shift = shift if takes_shift and shift is not None else np.zeros(channels)
    folded = None
    if not ctx.dry:
        weight = ctx.constant(node.inputs[1])
        bias = ctx.constant(node.inputs[2]) if has_bias_slot else None
        assert weight is not None
        try:
            folded = fold_into_producer(ChannelAffine(scale, use_shift), weight, bias, out_axis)
        except FoldRejected as rejected:
            raise _deep(f"folding into {what}: {rejected.reason}") from None

    def act(rw: Rewrite) -> None:
        assert folded is not None
        rw.replace_input(node, 1, folded.weight,
                         weights=(folded.max_abs_weight_before, folded.max_abs_weight_after))
        if has_bias_slot:
            rw.replace_input(node, 2, folded.bias)
        elif can_add_bias and takes_shift:
            rw.set_input(node, 2, folded.bias, f"{node.name}_bias")
        elif can_add_bias and np.any(folded.bias != 0):
            rw.set_input(node, 2, folded.bias, f"{node.name}_bias")

    plan.actions.append(act)
    plan.absorbed_by.append(node.name)
    plan.path.append(f"folded into its producer {what}")
    plan.rule = PRODUCER
    return takes_shift


def _into_table(node: gs.Node, shape: tuple[int, ...], affine: Affine, ctx: Context,
                plan: Request, want_shift: bool) -> bool:
    if EMBEDDING in ctx.skip:
        raise _Refused(f"rule '{EMBEDDING}' is skipped")
    what = f"Gather {quoted(node)}"
    if int(node.attrs.get("axis", 0)) != 0 or len(shape) != 2:
        raise _deep(f"{what} does not look rows up in a 2-D table")
    if len(node.inputs[0].outputs) != 1:
        raise _deep(f"the table of {what} is shared with another op (tied): folding would "
                       f"copy it")
    rank = affine.rank
    channels = shape[1]
    scale = affine.scale_vector(rank - 1, channels)
    shift = affine.shift_vector(rank - 1, channels)
    if scale is None or shift is None:
        raise _deep(f"the affine varies along more than the channels of {what}")
    use_shift = shift if want_shift else np.zeros(channels)
    value, before = None, 0.0
    if not ctx.dry:
        table = ctx.private_constant(node.inputs[0])
        assert table is not None
        before = max_abs(table)
        value = rows_affine(table, scale, use_shift, in_place=True)
        del table
        if value is None:
            raise _deep(f"the table of {what} would not be finite in "
                        f"{node.inputs[0].dtype}")

    def act(rw: Rewrite) -> None:
        assert value is not None
        rw.replace_input(node, 0, value, weights=(before, max_abs(value)))

    plan.actions.append(act)
    plan.absorbed_by.append(node.name)
    plan.path.append(f"folded into the embedding table of {what}")
    plan.rule = EMBEDDING
    return want_shift


def _through_concat(node: gs.Node, affine: Affine, ctx: Context, plan: Request,
                    counter: list[int], want_shift: bool) -> bool:
    """Every part takes the same affine (it must not vary along the concat axis); parts that
    select from one tensor (torch.roll's two Slices) make one request on that tensor."""
    rank = affine.rank
    axis = int(node.attrs.get("axis", 0)) % rank
    if axis in affine.varying_axes():
        raise _Refused(f"the affine varies along the axis Concat {quoted(node)} joins")
    groups: dict[int, tuple[gs.Tensor, list[gs.Node]]] = {}
    took = []
    for slot, part in enumerate(node.inputs):
        value = ctx.constant(part)
        if value is not None:
            _replace_constant(node, slot, affine, value, plan, shift=want_shift)
            took.append(want_shift)
            continue
        producer = ctx.producer(part)
        if producer is not None and producer.op in ("Slice", "Gather") and \
                ctx.read_only_by(part, [node]) and ctx.constant(producer.inputs[0]) is None:
            data = producer.inputs[0]
            groups.setdefault(id(data), (data, []))[1].append(producer)
            continue
        took.append(_request(part, affine, [node], ctx, plan, counter, want_shift))
    for data, selections in groups.values():
        for selection in selections:
            if selection.op == "Gather":
                gathered = {int(selection.attrs.get("axis", 0)) % (ctx.rank(data) or rank)}
            else:
                axes = _slice_axes(selection, ctx)
                if axes is None:
                    raise _Refused(f"the axes of Slice {quoted(selection)} are not known")
                gathered = {a % rank for a in axes}
            if gathered & affine.varying_axes() or (selection.op == "Gather" and
                                                    ctx.rank(data) != rank):
                raise _Refused(f"{named(selection)} selects along an axis the "
                               f"affine varies along")
        took.append(_request(data, affine, selections, ctx, plan, counter, want_shift))
    plan.path.append(f"back through Concat {quoted(node)}")
    if want_shift and affine.has_shift and any(took) and not all(took):
        raise _Refused(f"only some parts of Concat {quoted(node)} can take the shift")
    return bool(took) and all(took)


def _slice_axes(node: gs.Node, ctx: Context) -> list[int] | None:
    if "starts" in node.attrs:  # opset < 10
        return list(node.attrs.get("axes", range(len(node.attrs["starts"]))))
    axes = ints(node, "", 3, ctx)
    if axes:
        return axes
    if axes is None:
        return None
    starts = ctx.constant(node.inputs[1])
    count = np.size(starts) if starts is not None else (ctx.shape(node.inputs[1]) or [None])[0]
    return list(range(count)) if isinstance(count, int) else None


def _through_pad(node: gs.Node, affine: Affine, ctx: Context, plan: Request,
                 counter: list[int], want_shift: bool) -> bool:
    from unfold.fold.transfer.pad import _pads
    pads = _pads(node, affine.rank, ctx)
    if pads is None or any(pads):
        raise _Refused(f"Pad {quoted(node)} pads (its zeros would not take the affine)")
    return _request(node.inputs[0], affine, [node], ctx, plan, counter, want_shift)


