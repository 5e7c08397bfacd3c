#!/usr/bin/env python3
"""Load every installed model once in onnxruntime with a dummy input; sanity-check YuNet.

Usage: smoke.py CLASSGUARD_HOME MODEL_FILE...
Exits non-zero with a one-line reason on the first failure.
"""
import os
import sys

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import rgb, session, yunet_faces, yunet_input  # noqa: E402
from whisper_verify import cross_feeds  # noqa: E402

# Concrete shapes for the dynamic dimensions of each model's inputs.
DUMMY = {
    "open_nsfw.onnx": {"input_0": [1, 224, 224, 3]},
    "nudenet-320n.onnx": {"images": [1, 3, 320, 320]},
    "ppocrv6-det-small.onnx": {"x": [1, 3, 64, 96]},
    "ppocrv6-rec-small.onnx": {"x": [1, 3, 48, 320]},
    "silero-vad-v6.onnx": {"input": [1, 576], "state": [2, 1, 128]},
}


def dummy_feeds(model_file, sess):
    feeds = {}
    for i in sess.get_inputs():
        shape = DUMMY.get(model_file, {}).get(i.name)
        if shape is None:
            shape = [d if isinstance(d, int) else 1 for d in i.shape]
        if i.type == "tensor(int64)":
            feeds[i.name] = np.array(16000, np.int64) if shape == [] else np.zeros(shape, np.int64)
        else:
            feeds[i.name] = np.full(shape, 0.5, np.float32)
    return feeds


def check_finite(model_file, names, outs):
    for n, o in zip(names, outs):
        if o.dtype.kind == "f" and not np.all(np.isfinite(o)):
            raise RuntimeError(f"{model_file}: output {n} is not finite")


def whisper(models, prefix):
    enc = session(os.path.join(models, prefix + "-encoder.onnx"))
    dec = session(os.path.join(models, prefix + "-decoder.onnx"))
    ck, cv = enc.run(None, {"mel": np.zeros((1, 80, 3000), np.float32) - 0.5})
    L, B, H, _, dh = ck.shape
    empty = np.zeros((L, B, H, 0, dh), np.float32)
    logits, pk, pv = dec.run(None, {"tokens": np.array([[50257, 50258]], np.int64), "offset": np.array([0], np.int64),
                                    **cross_feeds(ck, cv), "past_k": empty, "past_v": empty})
    check_finite(prefix, ["logits", "present_k", "present_v"], [logits, pk, pv])
    if pk.shape[3] != 2:
        raise RuntimeError(f"{prefix}-decoder.onnx: present_k has {pk.shape[3]} positions, expected 2")


def main():
    home = sys.argv[1]
    files = sys.argv[2:]
    models = os.path.join(home, "models")
    done = set()
    for f in files:
        if not f.endswith(".onnx") or f in done:
            continue
        try:
            if f.startswith("whisper-") and (f.endswith("-encoder.onnx") or f.endswith("-decoder.onnx")):
                prefix = f.rsplit("-", 1)[0]
                whisper(models, prefix)
                done.update({prefix + "-encoder.onnx", prefix + "-decoder.onnx"})
                continue
            sess = session(os.path.join(models, f))
            outs = sess.run(None, dummy_feeds(f, sess))
            check_finite(f, [o.name for o in sess.get_outputs()], outs)
            if f == "yunet.onnx":
                _, feeds = yunet_input(home)
                faces = yunet_faces(sess.run(None, feeds), [o.name for o in sess.get_outputs()])
                strong = [d for d in faces if d[0] > 0.8]
                if len(strong) != 1:
                    raise RuntimeError(f"yunet.onnx: {len(strong)} faces > 0.8 on astronaut.png, expected 1")
            done.add(f)
        except Exception as e:  # one line, naming the model
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            sys.exit(f"smoke: {f}: {msg}")
    print(f"smoke: {len(done)} models loaded and ran in onnxruntime {ort.__version__}")


if __name__ == "__main__":
    main()
