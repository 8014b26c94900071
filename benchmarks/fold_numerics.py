"""Numerics of the fold on a deep post-norm encoder: how far the carried scale drifts, how much
the folded weights and the residual stream grow, and what `max_scale` buys an fp16 engine.

    python benchmarks/fold_numerics.py                  # 24 layers, dim 256, bounds 16..1024
    python benchmarks/fold_numerics.py --init torch --json benchmarks/results/x.json
    python benchmarks/fold_numerics.py --depth 8 --dim 64 --gamma-growth 1.5 --bounds 4 16

The model is sample_models' `bert_base(norm="un")` at dim 256, 24 layers, 4 heads, FFN 1024,
vocabulary 1000. Its UnifiedNorms are CALIBRATED: the model runs in training mode (no
gradients, no optimizer step) on synthetic token batches until each norm's running statistic
ρ reflects its own inputs (warmup_iters=1, window_size=2, momentum 0.9: after `--steps 48`
the initial ρ = 1 weighs 0.9^48 = 0.6%), then goes to eval. Its γ and β are drawn
(γ = exp(N(0, 0.2)), β = N(0, 0.1)) as a trained model's are not all ones and zeros.
`--init unit` (default) draws every Linear weight from N(0, 1/fan_in), so a branch's output is
about as large as the stream it is added to, as in trained models; `--init torch` keeps
torch's default init, whose branches are ~5x smaller than the stream: the norms then barely
rescale and the carried scale hardly drifts. `--gamma-growth G` multiplies the k-th norm's γ
by G^k: its norms' scales then exceed 1 and the carried scale grows instead of shrinking.

Exported once (TorchScript exporter), folded without a bound and with each `--bounds` value.
Per variant: the rescale Muls the bound added, the carried scale range (the fold's own report,
`SiteReport.scale_range`, and per layer measured from the weights: the factor each residual
branch's output projection was divided by), the weights' growth (largest |w_after/w_before|
element-wise, per MatMul/Gemm/Gather table), the largest |value| of the residual-stream
tensors (every Add of two variables, and the rescale Muls) and of any float tensor in an
ONNX Runtime fp32 run with every intermediate as an output ("fp16 room": 65504 over the
larger of that and the largest |initializer|), the error against the unfolded model (at the
pooler, before its tanh, and at the logits, relative to each one's max |value|) in float64
(both models run in double: the fold's own error; the floor printed below the table is what
moving the unfolded model's weights by 2^-24, the rounding of a fold's fp32 weights, does)
and in fp32, and the error of two fp16 deployments against the fp32 unfolded model:

* `fp16 storage` (an emulation, exact about overflow): every float initializer rounded to
  float16, and every float tensor a node writes rounded to float16 (a Cast to float16 and back
  after it); each op computes in fp32 inside, as GPU fp16 engines accumulate. A value past
  65504 becomes inf there, as it would in an fp16 engine.
* `ORT fp16`: the model converted to float16 (initializers, Constant/Cast/ConstantOfShape,
  float inputs and outputs; `onnxconverter_common` is not installed here) and run by ONNX
  Runtime's CPU provider (which runs ops it has no float16 kernel for in fp32 between Casts
  it inserts, so its rounding is not a GPU engine's).

The unfolded model deployed the same two ways is the baseline row. A bound whose weights grew
by more than it is reported as BOUND NOT HELD, with the layers.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sample_models, from a checkout

FP16_MAX = 65504.0
LAYER = re.compile(r"/layers\.(\d+)/")
POOLER = "/pooler/Gemm_output_0"  # the pooler's output, before its tanh


# --- the model ---------------------------------------------------------------------------------

def build(args: argparse.Namespace) -> Any:
    """The calibrated post-norm encoder, in eval mode."""
    import torch

    from sample_models.bert import bert_base
    from unfold.nn import UnifiedNorm

    torch.set_num_threads(args.threads)
    options = {"warmup_iters": 1, "window_size": 2, "momentum": 0.9}
    model = bert_base(norm="un", seed=args.seed, dim=args.dim, depth=args.depth,
                      heads=args.heads, ffn_dim=4 * args.dim, vocab=args.vocab,
                      max_positions=args.seq, norm_options=options)
    draw = torch.Generator().manual_seed(args.seed + 1)
    norm_index = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and args.init == "unit":
                module.weight.normal_(0.0, 1.0 / math.sqrt(module.in_features), generator=draw)
                module.bias.normal_(0.0, 0.02, generator=draw)
            if isinstance(module, UnifiedNorm):
                module.weight.copy_(torch.randn(module.num_channels, generator=draw)
                                    .mul(0.2).exp() * args.gamma_growth ** norm_index)
                norm_index += 1
                module.bias.normal_(0.0, 0.1, generator=draw)
        model.train()
        for _ in range(args.steps):  # statistics only: no gradient, no optimizer step
            ids, mask = token_batch(args.batch, args.seq, args.vocab, draw)
            model(ids, mask)
    return model.eval()


def token_batch(batch: int, seq: int, vocab: int, draw: Any) -> tuple[Any, Any]:
    """Zipf-like token ids (a few frequent tokens, a long tail) and a full attention mask."""
    import torch

    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    ids = torch.multinomial(1.0 / ranks, batch * seq, replacement=True, generator=draw)
    return ids.reshape(batch, seq), torch.ones(batch, seq, dtype=torch.long)


def norm_summary(model: Any) -> list[dict[str, Any]]:
    """Each UnifiedNorm's eval scale a = γ/sqrt(ρ+eps): the factors the stream composes."""
    from unfold.nn import UnifiedNorm

    rows = []
    for name, module in model.named_modules():
        if isinstance(module, UnifiedNorm):
            a = module.eval_affine()[0].detach().abs()
            rows.append({"norm": name, "steps": int(module.num_steps),
                         "a_min": float(a.min()), "a_max": float(a.max())})
    return rows


def export(model: Any, feeds: dict[str, np.ndarray], path: Path) -> onnx.ModelProto:
    import torch

    args = tuple(torch.from_numpy(feeds[n]) for n in ("input_ids", "attention_mask"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"])
    return onnx.load(str(path))


# --- running ------------------------------------------------------------------------------------

def float_tensors(model: onnx.ModelProto) -> set[str]:
    """The names of the float32 tensors the nodes write (by shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    return {o for node in model.graph.node for o in node.output
            if types.get(o) == TensorProto.FLOAT}


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int,
        extra: list[str] = ()) -> dict[str, np.ndarray]:
    """One ONNX Runtime CPU run; `extra` intermediates become outputs too (optimizations off,
    so none is fused away)."""
    import onnxruntime as ort

    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    present = {o.name for o in marked.graph.output}
    for name in extra:
        if name not in present:
            marked.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(marked.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    return dict(zip(names, values, strict=True))


def finite_max(array: np.ndarray) -> float:
    """max |value| over the finite entries (the attention mask's -inf is no overflow)."""
    finite = np.abs(array[np.isfinite(array)])
    return float(finite.max()) if finite.size else 0.0


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|; inf if got is not finite."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if not np.all(np.isfinite(got)):
        return math.inf
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


# --- fp16 deployments ---------------------------------------------------------------------------

def _to_fp16(tensor: TensorProto) -> None:
    if tensor.data_type == TensorProto.FLOAT:
        with np.errstate(over="ignore"):
            array = numpy_helper.to_array(tensor).astype(np.float16)
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def fp16_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model in float16: initializers, tensor attributes (Constant, ConstantOfShape), Cast
    targets, float inputs and outputs; value_info dropped (ORT infers it)."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    for init in graph.initializer:
        _to_fp16(init)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _to_fp16(attr.t)
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    return half


def float64_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model in float64, to tell the fold's own error from fp32 arithmetic's. ONNX
    Runtime has no float64 Erf: Gelu and Erf become Tanh, in the folded and the unfolded
    model alike (the fold never touches them), so both still compute one function."""
    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    graph = wide.graph

    def widen(tensor: TensorProto) -> None:
        if tensor.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(tensor).astype(np.float64)
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))

    for init in graph.initializer:
        widen(init)
    for node in graph.node:
        if node.op_type in ("Gelu", "Erf"):
            node.op_type = "Tanh"
            del node.attribute[:]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                widen(attr.t)
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    return wide


def perturbed(model: onnx.ModelProto, relative: float, seed: int) -> onnx.ModelProto:
    """Every float64 initializer times (1 + U(-relative, relative)): rounding to fp32 does
    about this (2^-24) to the weights a fold writes."""
    noisy = onnx.ModelProto()
    noisy.CopyFrom(model)
    draw = np.random.default_rng(seed)
    for init in noisy.graph.initializer:
        if init.data_type == TensorProto.DOUBLE:
            array = numpy_helper.to_array(init)
            array = array * (1.0 + relative * draw.uniform(-1.0, 1.0, array.shape))
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    return noisy


def fp16_storage(model: onnx.ModelProto) -> onnx.ModelProto:
    """Emulated fp16 storage: float initializers rounded to float16 (kept float32), and every
    float32 tensor a node writes rounded to float16 by a Cast to float16 and back."""
    emulated = onnx.ModelProto()
    emulated.CopyFrom(model)
    graph = emulated.graph
    floats = float_tensors(model)
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            with np.errstate(over="ignore"):
                array = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for slot, name in enumerate(node.output):
            if name not in floats:
                continue
            raw = f"{name}__fp32"
            node.output[slot] = raw
            nodes.append(helper.make_node("Cast", [raw], [f"{name}__fp16"],
                                          name=f"{name}__to_fp16", to=TensorProto.FLOAT16))
            nodes.append(helper.make_node("Cast", [f"{name}__fp16"], [name],
                                          name=f"{name}__to_fp32", to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return emulated


def fp16_errors(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                reference: dict[str, np.ndarray], threads: int) -> dict[str, Any]:
    stored = run(fp16_storage(model), feeds, threads, [POOLER])
    half = run(fp16_model(model), feeds, threads, [POOLER])
    out: dict[str, Any] = {}
    for label, values in (("storage", stored), ("ort", half)):
        out[f"fp16_{label}_pooler_err"] = relative_error(values[POOLER], reference[POOLER])
        out[f"fp16_{label}_logits_err"] = relative_error(values["logits"],
                                                         reference["logits"])
    return out


# --- what the fold did to the weights and the stream -------------------------------------------

def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The weight of each MatMul/Gemm/Gather by node name (its initializer input)."""
    inits = {i.name: i for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        slot = {"MatMul": 1, "Gemm": 1, "Gather": 0}.get(node.op_type)
        if slot is not None and node.input[slot] in inits:
            found[node.name] = numpy_helper.to_array(inits[node.input[slot]])
    return found


def _layer_of(name: str) -> str:
    match = LAYER.search(name)
    return f"layer {int(match.group(1)):02d}" if match else "outside"


def weight_growth(original: onnx.ModelProto, folded: onnx.ModelProto) -> dict[str, Any]:
    """Per layer: the largest element-wise |w_after / w_before| of its weights, the largest
    |w| before and after, and the carried scale measured on its residual branches (each
    output projection's columns were divided by it: scale = w_before / w_after)."""
    before, after = _weights(original), _weights(folded)
    layers: dict[str, dict[str, Any]] = {}
    for name, old in before.items():
        new = after.get(name)
        if new is None or new.shape != old.shape:
            continue
        row = layers.setdefault(_layer_of(name), {"growth": 0.0, "max_w_before": 0.0,
                                                  "max_w_after": 0.0, "scale": None})
        big = np.abs(old) > 1e-6 * float(np.max(np.abs(old)))
        ratio = np.abs(new[big].astype(np.float64) / old[big])
        row["growth"] = max(row["growth"], float(ratio.max()))
        row["max_w_before"] = max(row["max_w_before"], float(np.max(np.abs(old))))
        row["max_w_after"] = max(row["max_w_after"], float(np.max(np.abs(new))))
        if name.endswith(("out_proj/MatMul", "fc2/MatMul")):
            with np.errstate(divide="ignore", invalid="ignore"):
                column = np.nanmedian(np.where(big, old / new, np.nan), axis=0)
            low, high = float(np.nanmin(np.abs(column))), float(np.nanmax(np.abs(column)))
            span = row["scale"] or [low, high]
            row["scale"] = [min(span[0], low), max(span[1], high)]
    return dict(sorted(layers.items()))


def stream_tensors(model: onnx.ModelProto) -> dict[str, str]:
    """The residual stream: every Add of two variables (the embedding sums, each residual
    Add) and every rescale Mul the bound added; tensor name -> its layer."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    found = {}
    for node in model.graph.node:
        residual = node.op_type == "Add" and not any(i in constants for i in node.input)
        if residual or (node.op_type == "Mul" and "_rescale" in node.name):
            found[node.output[0]] = _layer_of(node.name)
    return found


def measure(name: str, original: onnx.ModelProto, folded: onnx.ModelProto, report: Any,
            feeds: dict[str, np.ndarray], reference: dict[str, np.ndarray],
            reference64: dict[str, np.ndarray] | None, threads: int) -> dict[str, Any]:
    """One variant's row: `reference` is the unfolded model's fp32 run, `reference64` its
    float64 run."""
    floats = sorted(float_tensors(folded))
    values = run(folded, feeds, threads, floats)
    stream = stream_tensors(folded)
    stream_max: dict[str, float] = {}
    for tensor, layer in stream.items():
        peak = finite_max(values[tensor])
        stream_max[layer] = max(stream_max.get(layer, 0.0), peak)
    inits = [numpy_helper.to_array(i) for i in folded.graph.initializer
             if i.data_type == TensorProto.FLOAT]
    ranges = [s.scale_range for s in report.sites if s.scale_range] if report else []
    layers = weight_growth(original, folded) if report is not None else {}
    for layer, peak in stream_max.items():
        layers.setdefault(layer, {})["stream_max"] = peak
    row: dict[str, Any] = {
        "variant": name,
        "rescale_muls": sum(1 for n in folded.graph.node
                            if n.op_type == "Mul" and "_rescale" in n.name),
        "sites": len(report.sites) if report else 0,
        "folded": len(report.folded) if report else 0,
        "report_scale_range": [min(r[0] for r in ranges), max(r[1] for r in ranges)]
        if ranges else None,
        "report_max_abs_weight_after": max((s.max_abs_weight_after for s in report.sites),
                                           default=0.0) if report else None,
        "max_growth": max((r["growth"] for r in layers.values() if "growth" in r),
                          default=None),
        "max_abs_initializer": max(finite_max(a) for a in inits),
        "stream_max": max(stream_max.values()),
        "any_max": max(finite_max(values[t]) for t in floats),
        "fp16_room": FP16_MAX / max(max(finite_max(values[t]) for t in floats),
                                    max(finite_max(a) for a in inits)),
        "fp32_pooler_err": relative_error(values[POOLER], reference[POOLER]),
        "fp32_logits_err": relative_error(values["logits"], reference["logits"]),
        "layers": layers,
    }
    row.update(fp16_errors(folded, feeds, reference, threads))
    if reference64 is not None:
        wide = run(float64_model(folded), feeds, threads, [POOLER])
        row["f64_pooler_err"] = relative_error(wide[POOLER], reference64[POOLER])
        row["f64_logits_err"] = relative_error(wide["logits"], reference64["logits"])
    return row


# --- output ------------------------------------------------------------------------------------

def _g(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return f"{value[0]:.{digits}g}..{value[1]:.{digits}g}"
    return f"{value:.{digits}g}"


def print_tables(rows: list[dict[str, Any]]) -> None:
    print("errors: max |x - unfolded| / max |unfolded| at the pooler (before tanh) / logits; "
          "f64 and fp32 against the unfolded model in the same precision, fp16 against its "
          "fp32 run")
    print(f"{'variant':<10}{'Muls':>5}{'scale range (report)':>21}{'growth':>9}"
          f"{'max|init|':>10}{'max|stream|':>12}{'max|any|':>10}{'fp16 room':>10}"
          f"{'f64 err':>18}"
          f"{'fp32 err':>18}{'fp16 storage err':>18}{'ORT fp16 err':>18}")
    for r in rows:
        errors = "".join(
            f"{_g(r.get(f'{k}_pooler_err'), 2) + ' / ' + _g(r.get(f'{k}_logits_err'), 2):>18}"
            for k in ("f64", "fp32", "fp16_storage", "fp16_ort"))
        print(f"{r['variant']:<10}{r['rescale_muls']:>5}{_g(r['report_scale_range']):>21}"
              f"{_g(r['max_growth']):>9}{_g(r['max_abs_initializer']):>10}"
              f"{_g(r['stream_max']):>12}{_g(r['any_max']):>10}{_g(r['fp16_room'], 2):>10}"
              f"{errors}")
    folded = [r for r in rows if r["variant"] != "unfolded"]
    names = sorted({k for r in folded for k in r["layers"]})
    print("\nper layer: carried scale (from the branch weights) / largest |w_after/w_before| / "
          "max |stream|")
    print(f"{'layer':<10}" + "".join(f"{r['variant']:>30}" for r in folded))
    for name in names:
        cells = []
        for r in folded:
            c = r["layers"].get(name, {})
            cells.append(f"{_g(c.get('scale'), 2):>14} {_g(c.get('growth'), 2):>7} "
                         f"{_g(c.get('stream_max'), 2):>7}")
        print(f"{name:<10}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="calibration and test batch")
    parser.add_argument("--steps", type=int, default=48, help="calibration steps")
    parser.add_argument("--init", choices=("unit", "torch"), default="unit")
    parser.add_argument("--gamma-growth", type=float, default=1.0,
                        help="the k-th norm's γ times this^k: a stream whose carried scale "
                             "grows (its norms' a > 1) instead of shrinking")
    parser.add_argument("--bounds", type=float, nargs="*", default=[16, 64, 256, 1024])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).resolve().parent / "results/fold_numerics.json")
    args = parser.parse_args()

    from unfold.fold import fold_model

    started = time.perf_counter()
    print(f"calibrating ({args.steps} steps) ...", file=sys.stderr)
    model = build(args)
    import torch

    draw = torch.Generator().manual_seed(args.seed + 2)
    ids, mask = token_batch(args.batch, args.seq, args.vocab, draw)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    with tempfile.TemporaryDirectory() as tmp:
        original = export(model, feeds, Path(tmp) / "encoder.onnx")
    reference = run(original, feeds, args.threads, [POOLER])
    with torch.no_grad():
        torch_logits = model(ids, mask).numpy()
    reference64 = run(float64_model(original), feeds, args.threads, [POOLER])
    floor = max(relative_error(run(perturbed(float64_model(original), 2.0**-24, seed), feeds,
                                   args.threads, [POOLER])[POOLER], reference64[POOLER])
                for seed in range(3))
    rows = [measure("unfolded", original, original, None, feeds, reference, reference64,
                    args.threads)]
    reports = {}
    for bound in [None, *args.bounds]:
        name = "no bound" if bound is None else f"max {bound:g}"
        print(f"folding, {name} ...", file=sys.stderr)
        start = time.perf_counter()
        folded, report = fold_model(original, max_scale=bound)
        seconds = time.perf_counter() - start
        row = measure(name, original, folded, report, feeds, reference, reference64,
                      args.threads)
        row["fold_s"] = seconds
        row["bound"] = bound
        row["bound_held"] = None if bound is None else row["max_growth"] <= bound * (1 + 1e-6)
        rows.append(row)
        reports[name] = report.to_dict()
    print_tables(rows)
    for row in rows:
        if row.get("bound_held") is False:
            print(f"\nBOUND NOT HELD: {row['variant']}: weights grew by up to "
                  f"{row['max_growth']:.4g} (> {row['bound']:g}) in "
                  + ", ".join(f"{k} ({v['growth']:.3g})" for k, v in row["layers"].items()
                              if v.get("growth", 0.0) > row["bound"] * (1 + 1e-6)))
    norms = norm_summary(model)
    print(f"\nnorm scales a = γ/sqrt(ρ+eps): {min(n['a_min'] for n in norms):.3g}.."
          f"{max(n['a_max'] for n in norms):.3g} over {len(norms)} norms; product over the norms "
          f"of sqrt(min|a| max|a|): "
          f"{np.prod([math.sqrt(n['a_min'] * n['a_max']) for n in norms]):.3g}")
    print(f"unfolded ONNX vs torch (logits, fp32): "
          f"{relative_error(reference['logits'], torch_logits):.2g}; the unfolded model in "
          f"float64 with its weights perturbed by 2^-24 (what storing a fold's weights in fp32 "
          f"can do), pooler: {floor:.2g}")
    import onnxruntime

    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "exporter": "torch.onnx TorchScript (dynamo=False)",
        "norms": norms, "rows": rows, "reports": reports,
        "onnx_vs_torch_logits_err": relative_error(reference["logits"], torch_logits),
        "f64_weight_rounding_floor_pooler": floor,
        "seconds": time.perf_counter() - started,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"\nwritten {args.json} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
