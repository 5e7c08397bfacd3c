#!/usr/bin/env python3
"""Where a Whisper decoding step spends its time: ONNX Runtime's per-operator profile of the
decoder at several batch sizes, with the same session settings ClassGuard uses (no memory
arena, sequential execution).

Usage: profile_whisper_decoder.py DECODER.onnx [THREADS] [BATCH ...]
  e.g. ~/.local/share/classguard/venv/bin/python models/tools/profile_whisper_decoder.py \
       ~/.local/share/classguard/models/whisper-tiny.en-decoder.onnx 1 1 4 8
Prints, per batch size, milliseconds per step and per token and the five costliest operator
types. The cross-attention inputs are random: the cost does not depend on their values.
"""
import collections
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

STEPS = 40


def session(path, threads, profile_dir=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = False
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "decoder")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feeds_for(sess, batch):
    cross = {i.name: i.shape for i in sess.get_inputs() if i.name.startswith("cross_")}
    past_shape = next(i.shape for i in sess.get_inputs() if i.name == "past_k")
    layers, heads, dim = past_shape[0], past_shape[2], past_shape[4]
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((batch, heads, 1500, dim), dtype=np.float32) for n in cross}
    empty = np.zeros((layers, batch, heads, 0, dim), np.float32)
    return feeds, empty


def run(sess, batch):
    feeds, past = feeds_for(sess, batch)
    pk = pv = past
    t0 = time.perf_counter()
    for step in range(STEPS):
        _, pk, pv = sess.run(None, {"tokens": np.full((batch, 1), 50257, np.int64),
                                    "offset": np.array([step], np.int64), **feeds,
                                    "past_k": pk, "past_v": pv})
    return (time.perf_counter() - t0) / STEPS * 1000


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    batches = [int(b) for b in sys.argv[3:]] or [1, 4]
    for batch in batches:
        ms = run(session(path, threads), batch)
        with tempfile.TemporaryDirectory() as tmp:
            sess = session(path, threads, tmp)
            run(sess, batch)
            trace = json.load(open(sess.end_profiling()))
        per_op = collections.Counter()
        for e in trace:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                per_op[e["args"]["op_name"]] += e["dur"]
        total = sum(per_op.values())
        top = ", ".join(f"{op} {100 * us / total:.0f}%" for op, us in per_op.most_common(5))
        print(f"batch {batch}: {ms:.2f} ms/step, {ms / batch:.2f} ms/token; {top}")


if __name__ == "__main__":
    main()
