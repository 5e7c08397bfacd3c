// Drives `classguard serve` with tus-js-client (the tus project's reference JavaScript client) under
// Node, the way a classroom server forwards MediaRecorder blobs: each upload is a stream of the
// recording's real blob sizes (fixtures/browser/*.rec.json), with its length deferred until the last
// blob, as a live class does not know its length in advance.
//
//   node tus_js.mjs many   BASE TOKEN COUNT FILE...   COUNT uploads at once, cycling over FILEs
//   node tus_js.mjs start  BASE TOKEN COUNT FRACTION FILE...
//                                                     upload FRACTION of each, print their urls
//   node tus_js.mjs finish BASE TOKEN STATE_JSON      resume every upload of `start` and finish it
//
// Prints one JSON object on stdout; exits non-zero on any failed upload or missing verdict.
import { readFileSync, existsSync } from "node:fs";
import { Readable } from "node:stream";
import { basename } from "node:path";
import * as tus from "tus-js-client";

const [scenario, base, token, ...rest] = process.argv.slice(2);
const auth = { Authorization: `Bearer ${token}` };

function blobSizes(file, size) {
  const rec = file.replace(/\.webm$/, ".rec.json");
  if (existsSync(rec)) {
    const sizes = JSON.parse(readFileSync(rec, "utf8")).chunk_sizes;
    if (sizes && sizes.reduce((a, b) => a + b, 0) === size) return sizes;
  }
  const sizes = [];
  for (let at = 0; at < size; at += 32768) sizes.push(Math.min(32768, size - at));
  return sizes;
}

/// A Readable that emits `bytes` as the recorder's blobs.
function blobStream(bytes, sizes) {
  const parts = [];
  let at = 0;
  for (const n of sizes) {
    parts.push(bytes.subarray(at, at + n));
    at += n;
  }
  return Readable.from(parts, { objectMode: false });
}

function roleOf(file) {
  return /whiteboard|screen|desktop/.test(file) ? "desktop" : "camera";
}

/// Uploads `file` (or its tail from the server's offset, when `url` is given); stops after
/// `stopAt` bytes when set. Resolves with the upload url.
function upload(file, i, { url = null, stopAt = null } = {}) {
  const bytes = readFileSync(file);
  const sizes = blobSizes(file, bytes.length);
  return new Promise((resolve, reject) => {
    let stopped = false;
    const options = {
      endpoint: `${base}/files/`,
      headers: auth,
      chunkSize: 16 * 1024,
      uploadLengthDeferred: true,
      retryDelays: [100, 300, 1000, 2000, 4000],
      metadata: { session_id: `class-${i}`, role: roleOf(file), filename: basename(file) },
      storeFingerprintForResuming: false,
      onProgress(sent) {
        if (stopAt !== null && sent >= stopAt && !stopped) {
          stopped = true;
          up.abort(false).then(() => resolve(up.url), reject);
        }
      },
      onError: reject,
      onSuccess: () => resolve(up.url),
    };
    // A fresh upload streams the recorder's blobs. tus-js-client cannot start a stream past
    // offset 0, so a resumed one hands it the bytes (its length still deferred): it asks the
    // server for the offset (HEAD) and sends only the rest.
    if (url) options.uploadUrl = url;
    const up = new tus.Upload(url ? bytes : blobStream(bytes, sizes), options);
    up.start();
  });
}

async function headOffset(url) {
  const r = await fetch(url, { method: "HEAD", headers: { ...auth, "Tus-Resumable": "1.0.0" } });
  if (r.status !== 200) throw new Error(`HEAD ${url}: ${r.status}`);
  return Number(r.headers.get("upload-offset"));
}

const idOf = (url) => url.replace(/\/+$/, "").split("/").pop();

async function verdict(id, timeoutMs = 600_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await fetch(`${base}/v1/recordings/${id}/verdict`, { headers: auth });
    if (r.status === 200) return r.json();
    await new Promise((ok) => setTimeout(ok, 500));
  }
  throw new Error(`no verdict for ${id}`);
}

async function report(pairs) {
  const out = [];
  for (const { file, url } of pairs) {
    const id = idOf(url);
    const v = await verdict(id);
    out.push({
      file: basename(file),
      id,
      decision: v.decision,
      partial: v.recording.partial,
      labels: [...new Set(v.findings.map((f) => f.label))].sort(),
    });
  }
  return out;
}

async function main() {
  if (scenario === "many") {
    const [count, ...files] = rest;
    const jobs = [];
    for (let i = 0; i < Number(count); i++) {
      const file = files[i % files.length];
      jobs.push(upload(file, i).then((url) => ({ file, url })));
    }
    const pairs = await Promise.all(jobs);
    console.log(JSON.stringify({ scenario, uploads: await report(pairs) }));
  } else if (scenario === "start") {
    const [count, fraction, ...files] = rest;
    const jobs = [];
    for (let i = 0; i < Number(count); i++) {
      const file = files[i % files.length];
      const stopAt = Math.floor(readFileSync(file).length * Number(fraction));
      jobs.push(upload(file, i, { stopAt }).then((url) => ({ file, url, i })));
    }
    console.log(JSON.stringify({ scenario, uploads: await Promise.all(jobs) }));
  } else if (scenario === "finish") {
    const state = JSON.parse(readFileSync(rest[0], "utf8"));
    const resumedFrom = new Array(state.uploads.length);
    const jobs = state.uploads.map(async ({ file, url, i }, k) => {
      resumedFrom[k] = await headOffset(url);
      await upload(file, i, { url });
      return { file, url };
    });
    const pairs = await Promise.all(jobs);
    console.log(JSON.stringify({ scenario, resumed_from: resumedFrom, uploads: await report(pairs) }));
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
}

main().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});
