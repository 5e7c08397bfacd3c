#!/usr/bin/env python3
"""Face detection + nudity + voice activity over a recording, scripted the plain way.

This is the comparison row `python-baseline` of `cargo bench --bench e2e` (docs/benchmarks.md):
the script a user would write instead of `classguard scan --policy
pipelines/bench-face-nudity-vad.toml`. ffmpeg decodes the video at one frame per second
(`-vf fps=1`) and pipes raw RGB frames; every sampled frame goes through YuNet and open_nsfw;
ffmpeg decodes the audio to 16 kHz mono float and Silero VAD runs over all of it. All three
models run with onnxruntime from PyPI on the same model files ClassGuard installs, with the same
input sizes, preprocessing and post-processing (src/models/face.rs, nsfw.rs, vad.rs and the
thresholds of pipelines/bench-face-nudity-vad.toml), so both do the same model work.

  python pipeline.py RECORDING [--models DIR] [--out DIR] [--threads N]

Prints a JSON summary (frames, faces, nudity scores, speech) on stdout, and writes it to
DIR/baseline.json with --out.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

# pipelines/bench-face-nudity-vad.toml and the model wrappers' fixed settings.
YUNET_SCORE = 0.6  # YuNet::score_threshold (candidates into NMS)
YUNET_NMS = 0.3
YUNET_TOP_K = 5000
FACE_SCORE_MIN = 0.7  # [face] detection_score_min
NSFW_THRESHOLD = 0.8  # [nudity] threshold
NSFW_MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
VAD = dict(threshold=0.5, neg_threshold=0.35, min_speech_ms=250, min_silence_ms=500,
           speech_pad_ms=200, end_lag_ms=32)  # [speech] + VadOptions::end_lag_ms
SR = 16000
CHUNK = 512
CONTEXT = 64


def model_dir():
    """Where ClassGuard's setup installs the models (ModelHome::locate in src/models/mod.rs)."""
    root = os.environ.get("CLASSGUARD_HOME")
    if not root:
        xdg = os.environ.get("XDG_DATA_HOME")
        if xdg and os.path.isabs(xdg):
            root = os.path.join(xdg, "classguard")
        else:
            root = os.path.join(os.path.expanduser("~"), ".local/share/classguard")
    return os.path.join(root, "models")


def session(path, threads):
    # One intra-op thread per session (--threads 1, the default here), the setting ClassGuard's
    # bench policy gives each of its sessions. onnxruntime's own default (--threads 0: one
    # thread per physical core, 2 here, spin-waiting between operators) was slower on the
    # 2-core bench machine: its threads compete with ffmpeg's decoder threads, which decode the
    # next frames meanwhile, and with everything else on the machine. On the 2-minute camera
    # file, in interleaved runs, it took 18-33 s wall and 15-17 CPU-s against 7-14 s and 7-8.5
    # CPU-s with 1 thread, so 1 thread is the faster, fairer baseline (docs/benchmarks.md).
    so = ort.SessionOptions()
    if threads > 0:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def nms(boxes, scores, iou_threshold):
    """Greedy NMS over [x, y, w, h] boxes, highest score first; returns kept indices."""
    order = np.argsort(-scores, kind="stable")
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    area = boxes[:, 2] * boxes[:, 3]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return keep


class YuNet:
    """YuNet 2023mar: 640x640 BGR 0..255 NCHW, the frame at the top-left of a zero canvas
    (shrunk to fit, never enlarged); score sqrt(cls*obj) per cell at strides 8/16/32."""

    def __init__(self, path, threads):
        self.sess = session(path, threads)
        inp = self.sess.get_inputs()[0]
        self.input = inp.name
        self.in_h, self.in_w = inp.shape[2], inp.shape[3]
        self.strides = (8, 16, 32)
        self.outputs = [f"{k}_{s}" for s in self.strides for k in ("cls", "obj", "bbox")]
        self.blob = np.zeros((1, 3, self.in_h, self.in_w), np.float32)

    def detect(self, rgb):
        """Faces as (boxes [N, 4] x, y, w, h in frame pixels, scores [N])."""
        h, w = rgb.shape[:2]
        scale = min(self.in_w / w, self.in_h / h, 1.0)
        if scale < 1.0:
            nw, nh = round(w * scale), round(h * scale)
            rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
            scale = (nw / w + nh / h) / 2
        nh, nw = rgb.shape[:2]
        self.blob[:] = 0
        self.blob[0, :, :nh, :nw] = rgb[:, :, ::-1].transpose(2, 0, 1)
        outs = self.sess.run(self.outputs, {self.input: self.blob})
        boxes, scores = [], []
        for level, s in enumerate(self.strides):
            cls, obj, bbox = (o[0] for o in outs[3 * level:3 * level + 3])
            score = np.sqrt(np.clip(cls[:, 0], 0, 1) * np.clip(obj[:, 0], 0, 1))
            idx = np.nonzero(score >= YUNET_SCORE)[0]
            if idx.size == 0:
                continue
            cols = self.in_w // s
            c, r = idx % cols, idx // cols
            b = bbox[idx]
            cx, cy = (c + b[:, 0]) * s, (r + b[:, 1]) * s
            bw, bh = np.exp(b[:, 2]) * s, np.exp(b[:, 3]) * s
            boxes.append(np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1))
            scores.append(score[idx])
        if not boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        boxes, scores = np.concatenate(boxes) / scale, np.concatenate(scores)
        # Clamp to the frame, drop degenerate boxes, cap, NMS (face.rs finish_faces).
        x1 = np.clip(boxes[:, 0], 0, w)
        y1 = np.clip(boxes[:, 1], 0, h)
        x2 = np.clip(boxes[:, 0] + boxes[:, 2], 0, w)
        y2 = np.clip(boxes[:, 1] + boxes[:, 3], 0, h)
        boxes = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
        ok = (boxes[:, 2] > 1) & (boxes[:, 3] > 1)
        boxes, scores = boxes[ok], scores[ok]
        top = np.argsort(-scores, kind="stable")[:YUNET_TOP_K]
        boxes, scores = boxes[top], scores[top]
        keep = nms(boxes, scores, YUNET_NMS)
        return boxes[keep], scores[keep]


class OpenNsfw:
    """Yahoo open_nsfw: resize to 256x256 (bilinear), centre crop 224, BGR minus means, NHWC."""

    def __init__(self, path, threads):
        self.sess = session(path, threads)
        self.input = self.sess.get_inputs()[0].name

    def score(self, rgb):
        img = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.BILINEAR), np.float32)
        x = img[16:240, 16:240, ::-1] - NSFW_MEAN_BGR
        return float(self.sess.run(None, {self.input: x[None]})[0][0, 1])


class SileroVad:
    """Silero VAD v6, streamed as in src/models/vad.rs: 512-sample chunks prefixed by the
    previous chunk's last 64 samples, state [2, 1, 128] carried, the last chunk zero-padded;
    segments by the same hysteresis (VadStream + Segmenter)."""

    def __init__(self, path, threads):
        self.sess = session(path, threads)

    def probabilities(self, samples):
        state = np.zeros((2, 1, 128), np.float32)
        window = np.zeros((1, CONTEXT + CHUNK), np.float32)
        sr = np.array(SR, np.int64)
        n = (len(samples) + CHUNK - 1) // CHUNK
        padded = np.zeros(n * CHUNK, np.float32)
        padded[: len(samples)] = samples
        probs = np.empty(n, np.float32)
        for i in range(n):
            window[0, CONTEXT:] = padded[i * CHUNK:(i + 1) * CHUNK]
            out, state = self.sess.run(None, {"input": window, "state": state, "sr": sr})
            probs[i] = out[0, 0]
            window[0, :CONTEXT] = window[0, CHUNK:]
        return probs

    @staticmethod
    def segments(probs, total_samples, threshold, neg_threshold, min_speech_ms,
                 min_silence_ms, speech_pad_ms, end_lag_ms):
        """Speech segments [(start_ms, end_ms)] (vad.rs Segmenter, sample positions)."""
        ms = lambda v: v * SR // 1000  # noqa: E731
        min_speech, min_silence, pad, end_lag = (ms(v) for v in (
            min_speech_ms, min_silence_ms, speech_pad_ms, end_lag_ms))
        out = []
        triggered, start, temp_end, last_end = False, 0, None, 0

        def close(end, total=None):
            nonlocal triggered, temp_end, last_end
            triggered, temp_end = False, None
            if end - start < min_speech:
                return
            s = max(start - pad, 0, last_end)
            e = end + pad
            if total is not None:
                e = min(e, total)
            last_end = e
            out.append((s * 1000 // SR, e * 1000 // SR))

        for i, p in enumerate(probs):
            pos = i * CHUNK
            if p >= threshold:
                temp_end = None
                if not triggered:
                    triggered, start = True, pos
            elif triggered and p < neg_threshold:
                if temp_end is None:
                    temp_end = pos
                if pos + CHUNK - temp_end >= min_silence:
                    close(max(temp_end - end_lag, start))
        if triggered:
            end = total_samples if temp_end is None else max(temp_end - end_lag, start)
            close(end, total_samples)
        return out


def video_size(path):
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height", "-of", "csv=p=0", path],
        check=True, capture_output=True, text=True).stdout
    w, h = out.strip().splitlines()[0].split(",")[:2]
    return int(w), int(h)


def has_audio(path):
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=index",
         "-of", "csv=p=0", path], check=True, capture_output=True, text=True).stdout
    return bool(out.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recording")
    ap.add_argument("--models", default=model_dir(), help="model folder (default: %(default)s)")
    ap.add_argument("--out", help="also write the summary to OUT/baseline.json")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads per session (0 = onnxruntime's default; default: 1)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    yunet = YuNet(os.path.join(args.models, "yunet.onnx"), args.threads)
    nsfw = OpenNsfw(os.path.join(args.models, "open_nsfw.onnx"), args.threads)
    vad = SileroVad(os.path.join(args.models, "silero-vad-v6.onnx"), args.threads)
    t_load = time.perf_counter() - t0

    # Audio: ffmpeg decodes and resamples to 16 kHz mono float; the VAD runs over all of it.
    t1 = time.perf_counter()
    speech, audio_s, probs = [], 0.0, np.zeros(0, np.float32)
    if has_audio(args.recording):
        pcm = subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", args.recording, "-map", "0:a:0",
             "-ac", "1", "-ar", str(SR), "-f", "f32le", "-"],
            check=True, capture_output=True).stdout
        samples = np.frombuffer(pcm, np.float32)
        audio_s = len(samples) / SR
        probs = vad.probabilities(samples)
        speech = vad.segments(probs, len(samples), **VAD)
    t_audio = time.perf_counter() - t1

    # Video: one frame per second, raw RGB through a pipe; both models on every frame.
    t2 = time.perf_counter()
    w, h = video_size(args.recording)
    ff = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", args.recording, "-map", "0:v:0",
         "-vf", "fps=1", "-pix_fmt", "rgb24", "-f", "rawvideo", "-"],
        stdout=subprocess.PIPE)
    frame_bytes = w * h * 3
    frames, faces_total, frames_with_face, max_faces = 0, 0, 0, 0
    nsfw_scores = []
    t_face = t_nsfw = 0.0
    while True:
        buf = ff.stdout.read(frame_bytes)
        if len(buf) < frame_bytes:
            break
        rgb = np.frombuffer(buf, np.uint8).reshape(h, w, 3)
        frames += 1
        ta = time.perf_counter()
        _, scores = yunet.detect(rgb)
        n = int(np.count_nonzero(scores >= FACE_SCORE_MIN))
        tb = time.perf_counter()
        nsfw_scores.append(nsfw.score(rgb))
        tc = time.perf_counter()
        t_face += tb - ta
        t_nsfw += tc - tb
        faces_total += n
        frames_with_face += n > 0
        max_faces = max(max_faces, n)
    if ff.wait() != 0:
        sys.exit(f"ffmpeg video decode failed with status {ff.returncode}")
    t_video = time.perf_counter() - t2

    nsfw_scores = np.array(nsfw_scores, np.float32)
    summary = {
        "recording": os.path.basename(args.recording),
        "threads": args.threads or "onnxruntime default",
        "frames": frames,
        "frames_with_face": frames_with_face,
        "faces": faces_total,
        "max_faces_in_frame": max_faces,
        "nsfw_max": round(float(nsfw_scores.max()), 4) if frames else None,
        "nsfw_mean": round(float(nsfw_scores.mean()), 4) if frames else None,
        "nsfw_frames_over_threshold": int(np.count_nonzero(nsfw_scores >= NSFW_THRESHOLD)),
        "audio_s": round(audio_s, 2),
        "vad_chunks": int(len(probs)),
        "speech_segments": len(speech),
        "speech_s": round(sum(e - s for s, e in speech) / 1000, 2),
        "seconds": {
            "load": round(t_load, 2),
            "audio_decode_and_vad": round(t_audio, 2),
            "video": round(t_video, 2),
            "face": round(t_face, 2),
            "nsfw": round(t_nsfw, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "baseline.json"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
