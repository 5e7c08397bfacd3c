#!/usr/bin/env python3
"""Reference outputs of every installed model, for the Rust ONNX Runtime tests.

Usage: reference.py CLASSGUARD_HOME [MODEL_FILE ...]

For each model it builds a fixed input (documented per model below and in
models/README.md), runs python onnxruntime (CPU, 1 thread, all graph
optimisations) and writes into CLASSGUARD_HOME/reference/:
  <stem>.json              description, inputs, outputs (see models/README.md)
  <stem>.input.f32         the first (main) input tensor, raw little-endian f32
  <stem>.input.<name>.f32  further float inputs (.i64 for int64 inputs)
  <stem>.<extra>.f32       extra raw data named in the JSON ("extra" section)
where <stem> is the model file name without ".onnx".
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from whisper_mel import log_mel, read_wav_16k_mono  # noqa: E402
from whisper_verify import Tokenizer, cross_feeds, greedy  # noqa: E402

MAX_VALUES = 4096
WHISPER_SENTENCE = "Hello everyone, welcome to today's class."
OCR_TEXT = "Meet me at room 42"
# ArcFace / SFace 112x112 five-point template (eyes, nose, mouth corners).
SFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                           [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def rgb(home, name="astronaut.png"):
    return Image.open(os.path.join(home, "testdata", name)).convert("RGB")


def nchw(a):
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None]).astype(np.float32)


# ---- per-model inputs ------------------------------------------------------
def yunet_input(home):
    a = np.asarray(rgb(home), np.float32)[:, :, ::-1]           # BGR 0..255, 512x512
    canvas = np.zeros((640, 640, 3), np.float32)
    canvas[:a.shape[0], :a.shape[1]] = a                        # pad right/bottom with 0
    return ("astronaut.png (512x512) as BGR 0..255, padded with zeros right/bottom to 640x640, NCHW",
            {"input": nchw(canvas)})


def yunet_faces(outputs, names, size=640, thresh=0.6):
    """Decode YuNet outputs -> list of (score, x, y, w, h, kps[5,2]) after NMS."""
    o = dict(zip(names, outputs))
    dets = []
    for s in (8, 16, 32):
        cols = size // s
        cls, obj = o[f"cls_{s}"][0, :, 0], o[f"obj_{s}"][0, :, 0]
        bbox, kps = o[f"bbox_{s}"][0], o[f"kps_{s}"][0]
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        for i in np.nonzero(score > thresh)[0]:
            r, c = divmod(int(i), cols)
            cx, cy = (c + bbox[i, 0]) * s, (r + bbox[i, 1]) * s
            w, h = np.exp(bbox[i, 2]) * s, np.exp(bbox[i, 3]) * s
            k = np.stack([(c + kps[i, 0::2]) * s, (r + kps[i, 1::2]) * s], axis=1)
            dets.append((float(score[i]), cx - w / 2, cy - h / 2, w, h, k))
    dets.sort(key=lambda d: -d[0])
    keep = []
    for d in dets:
        if all(iou(d, k) < 0.3 for k in keep):
            keep.append(d)
    return keep


def iou(a, b):
    ax2, ay2, bx2, by2 = a[1] + a[3], a[2] + a[4], b[1] + b[3], b[2] + b[4]
    iw = max(0.0, min(ax2, bx2) - max(a[1], b[1]))
    ih = max(0.0, min(ay2, by2) - max(a[2], b[2]))
    inter = iw * ih
    return inter / (a[3] * a[4] + b[3] * b[4] - inter + 1e-9)


def similarity(src, dst):
    """Least-squares similarity transform (Umeyama) mapping src points to dst points: 2x3."""
    sm, dm = src.mean(0), dst.mean(0)
    s0, d0 = src - sm, dst - dm
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    dfix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        dfix[1, 1] = -1
    rot = u @ dfix @ vt
    scale = np.trace(np.diag(sig) @ dfix) / s0.var(0).sum()
    t = dm - scale * rot @ sm
    return np.hstack([scale * rot, t[:, None]])


def sface_input(home, models):
    yn = session(os.path.join(models, "yunet.onnx"))
    _, feeds = yunet_input(home)
    faces = yunet_faces(yn.run(None, feeds), [o.name for o in yn.get_outputs()])
    if not faces:
        raise RuntimeError("YuNet found no face on astronaut.png")
    kps = faces[0][5]
    m = similarity(kps, SFACE_TEMPLATE)                         # image -> template
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]          # template -> image (PIL wants this)
    crop = rgb(home).transform((112, 112), Image.AFFINE, tuple(inv.reshape(-1)), resample=Image.BILINEAR)
    desc = ("astronaut.png aligned to the 112x112 five-point template from YuNet's landmarks "
            f"{np.round(kps, 2).tolist()} (similarity transform, bilinear), RGB 0..255, NCHW")
    return desc, {"data": nchw(np.asarray(crop, np.float32))}


def ultraface_input(home):
    im = rgb(home).resize((320, 240), Image.BILINEAR)
    a = (np.asarray(im, np.float32) - 127.0) / 128.0
    return "astronaut.png resized to 320x240 (bilinear), RGB (x-127)/128, NCHW", {"input": nchw(a)}


def open_nsfw_input(home):
    im = rgb(home).resize((256, 256), Image.BILINEAR).crop((16, 16, 240, 240))
    a = np.asarray(im, np.float32)[:, :, ::-1] - np.array([104.0, 117.0, 123.0], np.float32)
    return ("astronaut.png resized to 256x256 (bilinear), centre crop 224, BGR minus (104,117,123), NHWC "
            "(no JPEG round trip)", {"input_0": np.ascontiguousarray(a[None]).astype(np.float32)})


def nudenet_input(home):
    im = rgb(home).resize((320, 320), Image.BILINEAR)           # already square: no padding needed
    return "astronaut.png (square) resized to 320x320 (bilinear), RGB /255, NCHW", \
        {"images": nchw(np.asarray(im, np.float32) / 255.0)}


def ocr_det_input(home):
    a = np.asarray(rgb(home), np.float32)[:, :, ::-1]
    return "astronaut.png 512x512 (multiple of 32), BGR (x/255-0.5)/0.5, NCHW", \
        {"x": nchw((a / 255.0 - 0.5) / 0.5)}


def ocr_rec_input(_home):
    im = Image.new("RGB", (320, 48), "white")
    ImageDraw.Draw(im).text((6, 8), OCR_TEXT, font=ImageFont.load_default(size=28), fill="black")
    a = np.asarray(im, np.float32)[:, :, ::-1]
    return (f"the text {OCR_TEXT!r} drawn black on white 320x48 with Pillow's default font (size 28) at (6,8), "
            "BGR (x/255-0.5)/0.5, NCHW", {"x": nchw((a / 255.0 - 0.5) / 0.5)})


def vad_signal():
    n = np.arange(64 + 512, dtype=np.float64)
    x = 0.3 * np.sin(2 * np.pi * 220.0 * n / 16000) + 0.2 * np.sin(2 * np.pi * 1330.0 * n / 16000) \
        + 0.1 * np.sin(2 * np.pi * 3100.0 * n / 16000)
    return x.astype(np.float32)[None]


def vad_input(_home):
    return ("synthetic: 0.3 sin(220 Hz) + 0.2 sin(1330 Hz) + 0.1 sin(3100 Hz) at 16 kHz, samples n = 0..575 "
            "(64 context + 512 chunk), zero state, sr 16000",
            {"input": vad_signal(), "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)})


def espeak_audio(sentence):
    with tempfile.TemporaryDirectory() as tmp:
        raw, wav = os.path.join(tmp, "raw.wav"), os.path.join(tmp, "16k.wav")
        subprocess.run(["espeak-ng", "-w", raw, sentence], check=True)
        subprocess.run(["sox", "-D", raw, "-r", "16000", "-c", "1", "-b", "16", wav], check=True)
        return read_wav_16k_mono(wav)


# ---- writing ---------------------------------------------------------------
def tensor_file(ref_dir, fname, arr):
    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.float32:
        data = arr.astype("<f4").tobytes()
    elif arr.dtype == np.int64:
        data = arr.astype("<i8").tobytes()
    else:
        raise TypeError(arr.dtype)
    with open(os.path.join(ref_dir, fname), "wb") as f:
        f.write(data)
    return {"file": fname, "dtype": "f32" if arr.dtype == np.float32 else "i64", "shape": list(arr.shape),
            "sha256": hashlib.sha256(data).hexdigest()}


def describe_output(name, arr):
    flat = np.asarray(arr).reshape(-1)
    d = {"name": name, "dtype": str(arr.dtype), "shape": list(arr.shape), "count": int(flat.size)}
    if flat.size:
        f64 = flat.astype(np.float64)
        d.update(sum=float(f64.sum()), min=float(f64.min()), max=float(f64.max()))
    d["values"] = [float(v) if flat.dtype.kind == "f" else int(v) for v in flat[:MAX_VALUES]]
    return d


def write_reference(ref_dir, stem, model_file, desc, feeds, sess, extra=None):
    inputs = []
    for i, (name, arr) in enumerate(feeds.items()):
        ext = "f32" if arr.dtype == np.float32 else "i64"
        fname = f"{stem}.input.{ext}" if i == 0 else f"{stem}.input.{name}.{ext}"
        entry = {"name": name}
        entry.update(tensor_file(ref_dir, fname, arr))
        inputs.append(entry)
    outs = sess.run(None, feeds)
    doc = {
        "format": 1,
        "model": model_file,
        "model_sha256": sha256_file(sess._model_path),
        "onnxruntime": ort.__version__,
        "input_description": desc,
        "inputs": inputs,
        "outputs": [describe_output(o.name, v) for o, v in zip(sess.get_outputs(), outs)],
        "values_per_output": MAX_VALUES,
        "extra": extra or {},
    }
    with open(os.path.join(ref_dir, stem + ".json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return outs


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


IMAGE_MODELS = {
    "yunet.onnx": yunet_input,
    "ultraface-rfb320.onnx": ultraface_input,
    "open_nsfw.onnx": open_nsfw_input,
    "nudenet-320n.onnx": nudenet_input,
    "ppocrv6-det-small.onnx": ocr_det_input,
    "ppocrv6-rec-small.onnx": ocr_rec_input,
    "silero-vad-v6.onnx": vad_input,
}


def whisper(home, models, ref_dir, prefix, only):
    enc_file, dec_file = f"{prefix}-encoder.onnx", f"{prefix}-decoder.onnx"
    if only and enc_file not in only and dec_file not in only:
        return
    audio = espeak_audio(WHISPER_SENTENCE)
    mel = log_mel(audio)[None]
    enc = session(os.path.join(models, enc_file))
    audio_info = tensor_file(ref_dir, f"{prefix}-encoder.audio.f32", audio)
    ck, cv = write_reference(
        ref_dir, enc_file[:-5], enc_file,
        f"log-mel (models/tools/whisper_mel.py) of espeak-ng {WHISPER_SENTENCE!r} resampled to 16 kHz by sox -D (no dither); "
        "the 16 kHz samples are in extra.audio", {"mel": mel}, enc, extra={"audio": audio_info})
    dec = session(os.path.join(models, dec_file))
    L, B, H, _, dh = ck.shape
    empty = np.zeros((L, B, H, 0, dh), np.float32)
    prompt = np.array([Tokenizer(os.path.join(models, prefix + "-tokenizer.json")).prompt(
        dec.get_outputs()[0].shape[2])], np.int64)
    feeds = {"tokens": prompt, "offset": np.array([0], np.int64), **cross_feeds(ck, cv),
             "past_k": empty, "past_v": empty}
    cfg = json.load(open(os.path.join(models, prefix + "-config.json")))
    tok = Tokenizer(os.path.join(models, prefix + "-tokenizer.json"))
    _, greedy_tokens, _ = greedy(enc, dec, mel[0], cfg, tok)
    text = tok.decode(greedy_tokens)
    write_reference(ref_dir, dec_file[:-5], dec_file,
                    f"first decoder step: prompt {prompt[0].tolist()} (<|startoftranscript|> [<|en|> <|transcribe|>] "
                    "<|notimestamps|>), offset 0, "
                    "cross_k_l/cross_v_l: layer l of the encoder reference's cross_k/cross_v, empty past (P = 0)",
                    feeds, dec,
                    extra={"greedy_tokens": greedy_tokens, "greedy_text": text,
                           "greedy_rule": "prompt as the decoder input; config suppress_ids always, suppress_ids_begin "
                                          "on the first step; argmax; stop at <|endoftext|>"})


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: reference.py CLASSGUARD_HOME [MODEL_FILE ...]")
    home = sys.argv[1]
    only = set(sys.argv[2:])
    models = os.path.join(home, "models")
    ref_dir = os.path.join(home, "reference")
    os.makedirs(ref_dir, exist_ok=True)
    done = []
    for model_file, fn in IMAGE_MODELS.items():
        if only and model_file not in only:
            continue
        path = os.path.join(models, model_file)
        if not os.path.exists(path):
            continue
        desc, feeds = fn(home)
        write_reference(ref_dir, model_file[:-5], model_file, desc, feeds, session(path))
        done.append(model_file)
    if (not only or "sface.onnx" in only) and os.path.exists(os.path.join(models, "sface.onnx")):
        desc, feeds = sface_input(home, models)
        write_reference(ref_dir, "sface", "sface.onnx", desc, feeds, session(os.path.join(models, "sface.onnx")))
        done.append("sface.onnx")
    for prefix in ("whisper-tiny.en", "whisper-base"):
        if os.path.exists(os.path.join(models, prefix + "-encoder.onnx")):
            whisper(home, models, ref_dir, prefix, only)
            done.append(prefix)
    print("reference: wrote", ", ".join(done), "->", ref_dir)


if __name__ == "__main__":
    main()
