#!/usr/bin/env python3
"""Rebuild a Whisper model stored by CTranslate2 (model.bin) as two ONNX graphs.

Usage: whisper_ct2_to_onnx.py MODEL.bin ENCODER.onnx DECODER.onnx

Encoder graph
  input   mel      float32 [B, 80, 3000]      (log-mel, see whisper_mel.py)
  outputs cross_k  float32 [L, B, H, 1500, Dh] cross-attention keys of every decoder layer
          cross_v  float32 [L, B, H, 1500, Dh] cross-attention values of every decoder layer

Decoder graph (one or more new tokens, with a self-attention KV cache)
  inputs  tokens   int64   [B, T]
          offset   int64   [1]                 position index of tokens[:, 0]
          cross_k_0..cross_k_{L-1}, cross_v_0..cross_v_{L-1}
                   float32 [B, H, 1500, Dh]    the encoder's cross_k/cross_v split by layer: one
                                               input per layer, so that no step copies them (a
                                               Gather of layer l out of [L, ...] copies 2.3 MB per
                                               layer per token, ~15% of a decoding step)
          past_k   float32 [L, B, H, P, Dh]    self-attention keys of earlier tokens (P may be 0)
          past_v   float32 [L, B, H, P, Dh]
  outputs logits   float32 [B, T, vocab]
          present_k, present_v float32 [L, B, H, P+T, Dh]  (past followed by the new tokens)
  New token i sees all P past positions and new tokens 0..i (causal).

Weights are stored as fp32 (converted exactly from fp16).  Opset 17; GELU is the
exact erf form; LayerNorm eps 1e-5; attention scaled by Dh^-0.5.  The output is
deterministic: the same model.bin gives the same bytes.
"""
import math
import re
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ct2 import read_model_bin

OPSET = 17
EPS = 1e-5


class Builder:
    def __init__(self):
        self.nodes = []
        self.inits = []
        self.counter = 0
        self.const_cache = {}

    def name(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def init(self, name, array):
        self.inits.append(numpy_helper.from_array(np.array(array, order="C", copy=True), name))
        return name

    def const(self, array, hint="c"):
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.const_cache:
            self.const_cache[key] = self.init(self.name(hint), array)
        return self.const_cache[key]

    def op(self, op_type, inputs, hint=None, n_out=1, **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name("n_" + op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    # ---- building blocks -------------------------------------------------
    def linear(self, x, w, b, prefix):
        """y = x . w^T + b with w [out, in] (CTranslate2 layout)."""
        wt = self.init(prefix + "/weight_t", w.T.astype(np.float32))
        y = self.op("MatMul", [x, wt])
        if b is not None:
            y = self.op("Add", [y, self.init(prefix + "/bias", b.astype(np.float32))])
        return y

    def layer_norm(self, x, t, prefix):
        g = self.init(prefix + "/gamma", t[prefix + "/gamma"].astype(np.float32))
        b = self.init(prefix + "/beta", t[prefix + "/beta"].astype(np.float32))
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=EPS)

    def gelu(self, x):
        # 0.5 * x * (1 + erf(x / sqrt(2)))
        e = self.op("Erf", [self.op("Div", [x, self.const(np.float32(math.sqrt(2.0)))])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [e, self.const(np.float32(1.0))])]),
                               self.const(np.float32(0.5))])

    def split_heads(self, x, heads, dh):
        """[B, T, H*Dh] -> [B, H, T, Dh]"""
        r = self.op("Reshape", [x, self.const(np.array([0, 0, heads, dh], np.int64))])
        return self.op("Transpose", [r], perm=[0, 2, 1, 3])

    def merge_heads(self, x):
        """[B, H, T, Dh] -> [B, T, H*Dh]"""
        t = self.op("Transpose", [x], perm=[0, 2, 1, 3])
        return self.op("Reshape", [t, self.const(np.array([0, 0, -1], np.int64))])

    def attention(self, q, k, v, dh, mask=None):
        """q [B,H,Tq,Dh], k/v [B,H,Tk,Dh]; mask (bool, True = hidden) broadcast to [Tq,Tk]."""
        qs = self.op("Mul", [q, self.const(np.float32(dh ** -0.5))])
        kt = self.op("Transpose", [k], perm=[0, 1, 3, 2])
        s = self.op("MatMul", [qs, kt])
        if mask is not None:
            s = self.op("Where", [mask, self.const(np.float32(-np.inf)), s])
        p = self.op("Softmax", [s], axis=-1)
        return self.merge_heads(self.op("MatMul", [p, v]))

    def split3(self, x, d):
        return self.op("Split", [x, self.const(np.array([d, d, d], np.int64))], n_out=3, axis=-1)


def f32(a):
    return np.asarray(a).astype(np.float32)


def model_dims(t):
    d_model = t["encoder/conv1/weight"].shape[0]
    n_mels = t["encoder/conv1/weight"].shape[1]
    heads = int(t["encoder/num_heads"])
    dec_heads = int(t["decoder/num_heads"])
    if heads != dec_heads:
        raise ValueError("encoder and decoder head counts differ")
    n_enc = len({k.split("/")[1] for k in t if re.match(r"encoder/layer_\d+/", k)})
    n_dec = len({k.split("/")[1] for k in t if re.match(r"decoder/layer_\d+/", k)})
    vocab = t["decoder/embeddings/weight"].shape[0]
    for key, want in (("decoder/pre_norm", 1), ("decoder/scale_embeddings", 0),
                      ("decoder/start_from_zero_embedding", 0), ("decoder/alibi", 0)):
        if key in t and int(t[key]) != want:
            raise ValueError(f"unsupported setting {key}={int(t[key])}")
    if not np.array_equal(t["decoder/projection/weight"], t["decoder/embeddings/weight"]):
        raise ValueError("output projection is not tied to the embeddings")
    return dict(d=d_model, mels=n_mels, heads=heads, dh=d_model // heads, n_enc=n_enc, n_dec=n_dec,
                vocab=vocab, n_ctx=t["encoder/position_encodings/encodings"].shape[0],
                n_text_ctx=t["decoder/position_encodings/encodings"].shape[0])


def make_model(b, inputs, outputs, name):
    graph = helper.make_graph(b.nodes, name, inputs, outputs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="classguard-whisper-ct2-to-onnx", producer_version="1")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=False)
    return model


def build_encoder(t, m):
    b = Builder()
    d, H, dh, L = m["d"], m["heads"], m["dh"], m["n_dec"]
    mel = "mel"
    x = b.op("Conv", [mel, b.init("encoder/conv1/weight", f32(t["encoder/conv1/weight"])),
                      b.init("encoder/conv1/bias", f32(t["encoder/conv1/bias"]))],
             kernel_shape=[3], pads=[1, 1], strides=[1])
    x = b.gelu(x)
    x = b.op("Conv", [x, b.init("encoder/conv2/weight", f32(t["encoder/conv2/weight"])),
                      b.init("encoder/conv2/bias", f32(t["encoder/conv2/bias"]))],
             kernel_shape=[3], pads=[1, 1], strides=[2])
    x = b.gelu(x)
    x = b.op("Transpose", [x], perm=[0, 2, 1])  # [B, 1500, d]
    x = b.op("Add", [x, b.init("encoder/position_encodings", f32(t["encoder/position_encodings/encodings"]))])
    for i in range(m["n_enc"]):
        p = f"encoder/layer_{i}"
        h = b.layer_norm(x, t, p + "/self_attention/layer_norm")
        qkv = b.linear(h, t[p + "/self_attention/linear_0/weight"], t[p + "/self_attention/linear_0/bias"],
                       p + "/self_attention/linear_0")
        q, k, v = (b.split_heads(z, H, dh) for z in b.split3(qkv, d))
        a = b.attention(q, k, v, dh)
        a = b.linear(a, t[p + "/self_attention/linear_1/weight"], t[p + "/self_attention/linear_1/bias"],
                     p + "/self_attention/linear_1")
        x = b.op("Add", [x, a])
        h = b.layer_norm(x, t, p + "/ffn/layer_norm")
        h = b.gelu(b.linear(h, t[p + "/ffn/linear_0/weight"], t[p + "/ffn/linear_0/bias"], p + "/ffn/linear_0"))
        h = b.linear(h, t[p + "/ffn/linear_1/weight"], t[p + "/ffn/linear_1/bias"], p + "/ffn/linear_1")
        x = b.op("Add", [x, h])
    enc = b.layer_norm(x, t, "encoder/layer_norm")
    # Cross-attention K/V of all decoder layers in one MatMul: [d, L*2*d].
    w = np.concatenate([f32(t[f"decoder/layer_{l}/attention/linear_1/weight"]) for l in range(L)], axis=0)
    bias = np.concatenate([f32(t[f"decoder/layer_{l}/attention/linear_1/bias"]) for l in range(L)], axis=0)
    kv = b.linear(enc, w, bias, "decoder/cross_kv")                                    # [B, T, L*2*d]
    kv = b.op("Reshape", [kv, b.const(np.array([0, 0, L, 2, H, dh], np.int64))])       # [B, T, L, 2, H, dh]
    kv = b.op("Transpose", [kv], perm=[2, 3, 0, 4, 1, 5])                               # [L, 2, B, H, T, dh]
    ks, vs = b.op("Split", [kv, b.const(np.array([1, 1], np.int64))], n_out=2, axis=1)
    b.nodes.append(helper.make_node("Squeeze", [ks, b.const(np.array([1], np.int64))], ["cross_k"], name="squeeze_k"))
    b.nodes.append(helper.make_node("Squeeze", [vs, b.const(np.array([1], np.int64))], ["cross_v"], name="squeeze_v"))
    kv_shape = [L, "batch", H, m["n_ctx"], dh]
    return make_model(
        b,
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", m["mels"], 2 * m["n_ctx"]])],
        [helper.make_tensor_value_info("cross_k", TensorProto.FLOAT, kv_shape),
         helper.make_tensor_value_info("cross_v", TensorProto.FLOAT, kv_shape)],
        "whisper_encoder")


def build_decoder(t, m):
    b = Builder()
    d, H, dh, L = m["d"], m["heads"], m["dh"], m["n_dec"]
    emb = b.init("decoder/embeddings/weight", f32(t["decoder/embeddings/weight"]))
    x = b.op("Gather", [emb, "tokens"], axis=0)                                         # [B, T, d]
    t_len = b.op("Shape", ["tokens"], start=1, end=2)                                   # [1]
    p_len = b.op("Shape", ["past_k"], start=3, end=4)                                   # [1]
    zero = b.const(np.array([0], np.int64))
    sq = lambda v: b.op("Squeeze", [v, zero])                                          # [1] -> scalar
    one_s = b.const(np.int64(1))
    zero_s = b.const(np.int64(0))
    off = sq("offset")
    pos = b.op("Range", [off, b.op("Add", [off, sq(t_len)]), one_s])                    # [T]
    pe = b.init("decoder/position_encodings", f32(t["decoder/position_encodings/encodings"]))
    x = b.op("Add", [x, b.op("Gather", [pe, pos], axis=0)])
    # Causal mask over [T, P+T]: hidden where key index j > P + i.
    qi = b.op("Add", [b.op("Range", [zero_s, sq(t_len), one_s]), sq(p_len)])            # [T]
    qi = b.op("Unsqueeze", [qi, b.const(np.array([1], np.int64))])                     # [T, 1]
    kj = b.op("Range", [zero_s, b.op("Add", [sq(p_len), sq(t_len)]), one_s])            # [P+T]
    mask = b.op("Greater", [kj, qi])                                                    # [T, P+T]
    present_k, present_v = [], []
    for l in range(L):
        p = f"decoder/layer_{l}"
        li = b.const(np.int64(l))
        h = b.layer_norm(x, t, p + "/self_attention/layer_norm")
        qkv = b.linear(h, t[p + "/self_attention/linear_0/weight"], t[p + "/self_attention/linear_0/bias"],
                       p + "/self_attention/linear_0")
        q, k, v = (b.split_heads(z, H, dh) for z in b.split3(qkv, d))
        k = b.op("Concat", [b.op("Gather", ["past_k", li], axis=0), k], axis=2)         # [B, H, P+T, dh]
        v = b.op("Concat", [b.op("Gather", ["past_v", li], axis=0), v], axis=2)
        present_k.append(b.op("Unsqueeze", [k, zero]))
        present_v.append(b.op("Unsqueeze", [v, zero]))
        a = b.attention(q, k, v, dh, mask)
        a = b.linear(a, t[p + "/self_attention/linear_1/weight"], t[p + "/self_attention/linear_1/bias"],
                     p + "/self_attention/linear_1")
        x = b.op("Add", [x, a])
        # cross-attention
        h = b.layer_norm(x, t, p + "/attention/layer_norm")
        q = b.split_heads(b.linear(h, t[p + "/attention/linear_0/weight"], t[p + "/attention/linear_0/bias"],
                                   p + "/attention/linear_0"), H, dh)
        a = b.attention(q, f"cross_k_{l}", f"cross_v_{l}", dh)
        a = b.linear(a, t[p + "/attention/linear_2/weight"], t[p + "/attention/linear_2/bias"],
                     p + "/attention/linear_2")
        x = b.op("Add", [x, a])
        h = b.layer_norm(x, t, p + "/ffn/layer_norm")
        h = b.gelu(b.linear(h, t[p + "/ffn/linear_0/weight"], t[p + "/ffn/linear_0/bias"], p + "/ffn/linear_0"))
        h = b.linear(h, t[p + "/ffn/linear_1/weight"], t[p + "/ffn/linear_1/bias"], p + "/ffn/linear_1")
        x = b.op("Add", [x, h])
    x = b.layer_norm(x, t, "decoder/layer_norm")
    # Tied output projection: logits = x . E^T, sharing the embedding initializer.
    x2 = b.op("Reshape", [x, b.const(np.array([-1, d], np.int64))])
    lg = b.op("Gemm", [x2, emb], transB=1)
    shape_bt = b.op("Shape", ["tokens"])
    out_shape = b.op("Concat", [shape_bt, b.const(np.array([-1], np.int64))], axis=0)
    b.nodes.append(helper.make_node("Reshape", [lg, out_shape], ["logits"], name="reshape_logits"))
    b.nodes.append(helper.make_node("Concat", present_k, ["present_k"], axis=0, name="concat_present_k"))
    b.nodes.append(helper.make_node("Concat", present_v, ["present_v"], axis=0, name="concat_present_v"))
    cross = ["batch", H, m["n_ctx"], dh]
    past = [L, "batch", H, "past", dh]
    pres = [L, "batch", H, "past_plus_new", dh]
    return make_model(
        b,
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "new"]),
         helper.make_tensor_value_info("offset", TensorProto.INT64, [1]),
         *[helper.make_tensor_value_info(f"cross_{kv}_{l}", TensorProto.FLOAT, cross)
           for kv in "kv" for l in range(L)],
         helper.make_tensor_value_info("past_k", TensorProto.FLOAT, past),
         helper.make_tensor_value_info("past_v", TensorProto.FLOAT, past)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "new", m["vocab"]]),
         helper.make_tensor_value_info("present_k", TensorProto.FLOAT, pres),
         helper.make_tensor_value_info("present_v", TensorProto.FLOAT, pres)],
        "whisper_decoder")


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: whisper_ct2_to_onnx.py MODEL.bin ENCODER.onnx DECODER.onnx")
    spec, rev, t = read_model_bin(sys.argv[1])
    if spec != "WhisperSpec":
        sys.exit(f"whisper_ct2_to_onnx: {sys.argv[1]} holds {spec}, not WhisperSpec")
    m = model_dims(t)
    print("whisper_ct2_to_onnx:", m)
    onnx.save(build_encoder(t, m), sys.argv[2])
    onnx.save(build_decoder(t, m), sys.argv[3])


if __name__ == "__main__":
    main()
