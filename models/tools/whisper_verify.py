#!/usr/bin/env python3
"""Check the converted Whisper graphs: espeak-ng speech -> greedy transcript, and
KV-cache step == full-prefix run.

Usage: whisper_verify.py MODEL_DIR PREFIX [SENTENCE ...]
  MODEL_DIR holds PREFIX-encoder.onnx, PREFIX-decoder.onnx, PREFIX-tokenizer.json,
  PREFIX-config.json.  Needs espeak-ng and sox on PATH.  Exits non-zero on failure.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

from whisper_mel import log_mel, read_wav_16k_mono

DEFAULT_SENTENCES = [
    "Hello everyone, welcome to today's class.",
    "Please turn on your camera and open the shared document.",
    "We will start the lesson in five minutes.",
]


def bytes_decoder():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Tokenizer:
    def __init__(self, path):
        tj = json.load(open(path, encoding="utf-8"))
        self.id_to_tok = {i: t for t, i in tj["model"]["vocab"].items()}
        self.special = {}
        for a in tj.get("added_tokens", []):
            self.id_to_tok[a["id"]] = a["content"]
            self.special[a["content"]] = a["id"]
        self.byte_of = bytes_decoder()
        self.eot = self.special["<|endoftext|>"]
        self.sot = self.special["<|startoftranscript|>"]

    def prompt(self, vocab_size):
        """English transcription without timestamps; multilingual models (vocab 51865) need language + task."""
        p = [self.sot]
        if vocab_size >= 51865:
            p += [self.special["<|en|>"], self.special["<|transcribe|>"]]
        return p + [self.special["<|notimestamps|>"]]

    def decode(self, ids):
        text = "".join(self.id_to_tok[i] for i in ids if i < self.eot)
        return bytes(self.byte_of[c] for c in text).decode("utf-8", errors="replace")


def speak(sentence, tmp):
    raw, wav = os.path.join(tmp, "raw.wav"), os.path.join(tmp, "16k.wav")
    subprocess.run(["espeak-ng", "-w", raw, sentence], check=True)
    subprocess.run(["sox", "-D", raw, "-r", "16000", "-c", "1", "-b", "16", wav], check=True)
    return read_wav_16k_mono(wav)


def sessions(model_dir, prefix):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    enc = ort.InferenceSession(os.path.join(model_dir, prefix + "-encoder.onnx"), so, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(os.path.join(model_dir, prefix + "-decoder.onnx"), so, providers=["CPUExecutionProvider"])
    return enc, dec


def empty_past(cross_k):
    L, B, H, _, dh = cross_k.shape
    return np.zeros((L, B, H, 0, dh), np.float32)


def cross_feeds(cross_k, cross_v):
    """The decoder takes the encoder's [L, B, H, 1500, Dh] cross K/V as one input per layer."""
    feeds = {f"cross_k_{l}": cross_k[l] for l in range(cross_k.shape[0])}
    feeds.update({f"cross_v_{l}": cross_v[l] for l in range(cross_v.shape[0])})
    return feeds


def greedy(enc, dec, mel, cfg, tok, max_len=100):
    cross_k, cross_v = enc.run(None, {"mel": mel[None]})
    past_k = past_v = empty_past(cross_k)
    suppress = np.array(cfg["suppress_ids"], np.int64)
    suppress_begin = np.array(cfg["suppress_ids_begin"], np.int64)
    prompt = tok.prompt(dec.get_outputs()[0].shape[2])
    tokens = list(prompt)
    new = np.array([prompt], np.int64)
    offset = 0
    out = []
    for step in range(max_len):
        logits, past_k, past_v = dec.run(None, {"tokens": new, "offset": np.array([offset], np.int64),
                                                **cross_feeds(cross_k, cross_v),
                                                "past_k": past_k, "past_v": past_v})
        offset += new.shape[1]
        last = logits[0, -1].copy()
        last[suppress] = -np.inf
        if step == 0:
            last[suppress_begin] = -np.inf
        t = int(np.argmax(last))
        if t == tok.eot:
            break
        out.append(t)
        tokens.append(t)
        new = np.array([[t]], np.int64)
    return tokens, out, (cross_k, cross_v)


def norm(s):
    return re.sub(r"[^a-z0-9 ]", "", s.lower()).split()


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: whisper_verify.py MODEL_DIR PREFIX [SENTENCE ...]")
    model_dir, prefix = sys.argv[1], sys.argv[2]
    sentences = sys.argv[3:] or DEFAULT_SENTENCES
    cfg = json.load(open(os.path.join(model_dir, prefix + "-config.json")))
    tok = Tokenizer(os.path.join(model_dir, prefix + "-tokenizer.json"))
    enc, dec = sessions(model_dir, prefix)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for sentence in sentences:
            mel = log_mel(speak(sentence, tmp))
            tokens, out, (ck, cv) = greedy(enc, dec, mel, cfg, tok)
            text = tok.decode(out).strip()
            match = norm(text) == norm(sentence)
            ok &= match
            print(f"whisper_verify: {'OK ' if match else 'BAD'} {sentence!r} -> {text!r}")
            # KV cache equivalence: last step with the cache vs. whole prefix without.
            full = np.array([tokens], np.int64)
            past = empty_past(ck)
            lf, pk_full, pv_full = dec.run(None, {"tokens": full, "offset": np.array([0], np.int64),
                                                  **cross_feeds(ck, cv), "past_k": past, "past_v": past})
            _, pk, pv = dec.run(None, {"tokens": full[:, :-1], "offset": np.array([0], np.int64),
                                       **cross_feeds(ck, cv), "past_k": past, "past_v": past})
            ls, pk2, _ = dec.run(None, {"tokens": full[:, -1:], "offset": np.array([full.shape[1] - 1], np.int64),
                                        **cross_feeds(ck, cv), "past_k": pk, "past_v": pv})
            diff = float(np.max(np.abs(lf[0, -1] - ls[0, -1])))
            kdiff = float(np.max(np.abs(pk_full - pk2)))
            print(f"whisper_verify: cache vs full prefix ({full.shape[1]} tokens): max |dlogits| {diff:.2e}, "
                  f"max |dK| {kdiff:.2e}")
            ok &= diff < 1e-3 and kdiff < 1e-3
    if not ok:
        sys.exit("whisper_verify: FAILED")
    print("whisper_verify: all checks passed")


if __name__ == "__main__":
    main()
