#!/usr/bin/env python3
"""Fold DequantizeLinear nodes over initializers into plain fp32 initializers.

Usage: dequantize.py IN.onnx OUT.onnx

For every DequantizeLinear node whose inputs (x, scale[, zero_point]) are all
initializers, the float tensor y = (x - zero_point) * scale is computed in
numpy and stored as an initializer named after the node's output; the node is
removed.  Scale/zero_point are expanded as the operator defines:
  * blocked (attribute block_size > 0): repeated block_size times along `axis`
    and cut to x's length on that axis;
  * per-axis (1-D scale, x rank > 1, no block_size): broadcast along `axis`;
  * per-tensor (scalar or single-element scale): broadcast everywhere.
Afterwards every node, initializer and graph input that nothing consumes any
more is dropped, and graph inputs that are backed by an initializer are
removed from the input list (they are constants, not inputs).  The output is
deterministic: the same input file gives the same bytes.
"""
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def dequantize_array(x, scale, zp, axis, block_size):
    x = x.astype(np.float64)
    scale = scale.astype(np.float64)
    zp = np.zeros_like(scale) if zp is None else zp.astype(np.float64)
    if x.ndim == 0:
        return ((x - zp.reshape(())) * scale.reshape(())) if scale.size == 1 else None
    if axis < 0:
        axis += x.ndim
    if block_size and block_size > 0:
        if scale.ndim != x.ndim:
            raise ValueError(f"blocked scale rank {scale.ndim} != x rank {x.ndim}")
        n = x.shape[axis]
        s = np.repeat(scale, block_size, axis=axis)
        z = np.repeat(zp, block_size, axis=axis)
        idx = [slice(None)] * x.ndim
        idx[axis] = slice(0, n)
        s, z = s[tuple(idx)], z[tuple(idx)]
        if s.shape != x.shape:
            raise ValueError(f"blocked scale expands to {s.shape}, x is {x.shape}")
    elif scale.size == 1:
        s = scale.reshape(())
        z = zp.reshape(())
    else:
        if scale.ndim != 1 or scale.shape[0] != x.shape[axis]:
            raise ValueError(f"per-axis scale {scale.shape} does not fit x {x.shape} axis {axis}")
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        s = scale.reshape(shape)
        z = zp.reshape(shape)
    return (x - z) * s


def fold(model):
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes = []
    folded = 0
    for node in g.node:
        ins = [i for i in node.input if i]
        if node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx") and all(i in inits for i in ins):
            x = numpy_helper.to_array(inits[node.input[0]])
            scale = numpy_helper.to_array(inits[node.input[1]])
            zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
            y = dequantize_array(x, scale, zp, _attr(node, "axis", 1), _attr(node, "block_size", 0))
            t = numpy_helper.from_array(y.astype(np.float32), node.output[0])
            g.initializer.append(t)
            inits[node.output[0]] = t
            folded += 1
        else:
            new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    return folded


def prune(model):
    g = model.graph
    # Nodes whose outputs are never used (walk backwards from the graph outputs).
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for a in node.attribute:  # subgraphs: keep whatever they reference
                for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    for n2 in sg.node:
                        needed.update(i for i in n2.input if i)
    keep.reverse()
    removed_nodes = len(g.node) - len(keep)
    del g.node[:]
    g.node.extend(keep)
    used = needed
    init_names = {i.name for i in g.initializer}
    kept_inits = [i for i in g.initializer if i.name in used]
    removed_inits = len(g.initializer) - len(kept_inits)
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    init_names = {i.name for i in kept_inits}
    kept_inputs = [i for i in g.input if i.name in used and i.name not in init_names]
    removed_inputs = len(g.input) - len(kept_inputs)
    del g.input[:]
    g.input.extend(kept_inputs)
    vi = [v for v in g.value_info if v.name in used or v.name in {o.name for o in g.output}]
    del g.value_info[:]
    g.value_info.extend(vi)
    return removed_nodes, removed_inits, removed_inputs


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: dequantize.py IN.onnx OUT.onnx")
    model = onnx.load(sys.argv[1])
    n = fold(model)
    rn, ri, rin = prune(model)
    left = sum(1 for x in model.graph.node if x.op_type == "DequantizeLinear")
    if left:
        sys.exit(f"dequantize: {left} DequantizeLinear nodes have non-constant inputs; cannot fold")
    onnx.checker.check_model(model)
    onnx.save(model, sys.argv[2])
    print(f"dequantize: folded {n} DequantizeLinear, dropped {rn} nodes, {ri} initializers, {rin} graph inputs")


if __name__ == "__main__":
    main()
