#!/usr/bin/env python3
"""Drives classguard serve with tuspy (the tus project's Python client) and requests.

Usage: tus_client.py SCENARIO BASE_URL TOKEN FILE [CHUNK]
Prints one JSON object on stdout with what the scenario saw; exits non-zero on an unexpected answer.
"""
import base64
import hashlib
import json
import sys
import time

import requests
from tusclient import client as tus_client
from tusclient.uploader import Uploader

TUS = {"Tus-Resumable": "1.0.0"}


def meta(role, teacher=None):
    m = {"session_id": "class-42", "role": role}
    if teacher:
        m["teacher_id"] = teacher
    return m


def auth(token):
    return {"Authorization": "Bearer " + token}


def head(url, token):
    r = requests.head(url, headers={**TUS, **auth(token)})
    return r.status_code, r.headers


def status(base, token, rid):
    r = requests.get(f"{base}/v1/recordings/{rid}", headers=auth(token))
    r.raise_for_status()
    return r.json()


def rid_of(url):
    return url.rstrip("/").rsplit("/", 1)[-1]


def wait_verdict(base, token, rid, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = requests.get(f"{base}/v1/recordings/{rid}/verdict", headers=auth(token))
        if r.status_code == 200:
            return r.json()
        time.sleep(0.5)
    raise SystemExit(f"no verdict for {rid} after {timeout} s")


def uploader(base, token, path, chunk, role, **kw):
    c = tus_client.TusClient(base + "/files/", headers=auth(token))
    return Uploader(file_path=path, client=c, chunk_size=chunk, metadata=meta(role),
                    upload_checksum=True, **kw)


def main():
    scenario, base, token, path = sys.argv[1:5]
    chunk = int(sys.argv[5]) if len(sys.argv) > 5 else 16384
    role = "desktop" if "whiteboard" in path else "camera"
    data = open(path, "rb").read()
    out = {"scenario": scenario}

    if scenario == "upload":
        u = uploader(base, token, path, chunk, role)
        u.upload()
        out["id"] = rid_of(u.url)
        out["verdict"] = wait_verdict(base, token, out["id"])

    elif scenario == "unknown-teacher":
        # A teacher id to verify that nobody enrolled: the camera cannot be checked against it.
        c = tus_client.TusClient(base + "/files/", headers=auth(token))
        u = Uploader(file_path=path, client=c, chunk_size=chunk,
                     metadata=meta(role, teacher="t-never-enrolled"), upload_checksum=True)
        u.upload()
        out["id"] = rid_of(u.url)
        out["verdict"] = wait_verdict(base, token, out["id"])

    elif scenario == "resume":
        # Half the file through tuspy, then a PATCH that dies mid-chunk, then a fresh tuspy
        # uploader resumes from the server's offset (HEAD).
        u = uploader(base, token, path, chunk, role)
        u.upload(stop_at=len(data) // 2)
        url = u.url
        _, h = head(url, token)
        offset = int(h["Upload-Offset"])

        def dying_body():
            yield data[offset:offset + chunk // 2]
            raise ConnectionError("client dropped mid-chunk")

        try:
            requests.patch(url, data=dying_body(), headers={
                **TUS, **auth(token), "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream"})
        except Exception:
            pass
        time.sleep(0.5)
        _, h = head(url, token)
        out["offset_after_drop"] = int(h["Upload-Offset"])
        out["offset_before_drop"] = offset
        c = tus_client.TusClient(base + "/files/", headers=auth(token))
        resumed = Uploader(file_path=path, client=c, url=url, chunk_size=chunk, upload_checksum=True)
        out["resumed_from"] = resumed.offset
        resumed.upload()
        out["id"] = rid_of(url)
        out["verdict"] = wait_verdict(base, token, out["id"])

    elif scenario == "mismatch":
        u = uploader(base, token, path, chunk, role)
        u.upload(stop_at=chunk)
        url = u.url
        _, h = head(url, token)
        offset = int(h["Upload-Offset"])
        bad = base64.b64encode(hashlib.sha1(b"not these bytes").digest()).decode()
        r = requests.patch(url, data=data[offset:offset + chunk], headers={
            **TUS, **auth(token), "Upload-Offset": str(offset), "Upload-Checksum": "sha1 " + bad,
            "Content-Type": "application/offset+octet-stream"})
        out["status"] = r.status_code
        _, h = head(url, token)
        out["offset_before"] = offset
        out["offset_after"] = int(h["Upload-Offset"])
        # A PATCH at the wrong offset: 409, nothing changes.
        r = requests.patch(url, data=data[:10], headers={
            **TUS, **auth(token), "Upload-Offset": "3",
            "Content-Type": "application/offset+octet-stream"})
        out["wrong_offset_status"] = r.status_code
        _, h = head(url, token)
        out["offset_after_wrong"] = int(h["Upload-Offset"])
        # Another token's view and no token.
        out["no_token_status"] = requests.head(url, headers=TUS).status_code
        u.upload()
        out["id"] = rid_of(url)
        out["verdict"] = wait_verdict(base, token, out["id"])

    elif scenario == "terminate":
        u = uploader(base, token, path, chunk, role)
        u.upload(stop_at=chunk * 2)
        r = requests.delete(u.url, headers={**TUS, **auth(token)})
        out["delete_status"] = r.status_code
        out["head_after"] = head(u.url, token)[0]
        out["id"] = rid_of(u.url)
        time.sleep(1.0)
        out["state"] = status(base, token, out["id"])["state"]

    elif scenario == "deferred":
        # tuspy has no creation-defer-length, so the protocol steps are sent with requests.
        r = requests.post(base + "/files/", headers={
            **TUS, **auth(token), "Upload-Defer-Length": "1",
            "Upload-Metadata": "role " + base64.b64encode(role.encode()).decode()})
        assert r.status_code == 201, r.text
        url = requests.compat.urljoin(base + "/files/", r.headers["Location"])
        _, h = head(url, token)
        out["defer_header"] = h.get("Upload-Defer-Length")
        offset = 0
        while offset < len(data):
            piece = data[offset:offset + chunk]
            last = offset + len(piece) == len(data)
            hdrs = {**TUS, **auth(token), "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                    "Upload-Checksum": "sha1 " + base64.b64encode(hashlib.sha1(piece).digest()).decode()}
            if last:
                hdrs["Upload-Length"] = str(len(data))
            r = requests.patch(url, data=piece, headers=hdrs)
            assert r.status_code == 204, (r.status_code, r.text)
            offset = int(r.headers["Upload-Offset"])
        out["id"] = rid_of(url)
        out["verdict"] = wait_verdict(base, token, out["id"])

    elif scenario == "early":
        # MediaRecorder pace: chunk after chunk; before the last one, watch the API for findings.
        u = uploader(base, token, path, chunk, role)
        u.upload(stop_at=max(len(data) - chunk, chunk))
        rid = rid_of(u.url)
        deadline = time.time() + 120
        seen = []
        while time.time() < deadline:
            s = status(base, token, rid)
            if s["findings"]:
                seen = s["findings"]
                break
            time.sleep(0.5)
        out["findings_before_last_chunk"] = [f["label"] for f in seen]
        out["state_before_last_chunk"] = status(base, token, rid)["state"]
        u.upload()
        out["id"] = rid
        out["verdict"] = wait_verdict(base, token, rid)

    else:
        raise SystemExit("unknown scenario " + scenario)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
