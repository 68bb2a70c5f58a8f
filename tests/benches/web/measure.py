"""The measurements of tests/benches/web.sh, run in its testnet directory:
prints the markdown table for docs/BENCHMARKS.md ("Web inbox")."""
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

RUNS = 7
url = sys.argv[1]
hostport, token = url[len("http://"):].split("/#token=")
host, port = hostport.split(":")
headers = {"X-Vmail-Token": token}
vmail = os.environ["VMAIL"]


def cli(home, *args):
    env = dict(os.environ, VMAIL_HOME=f"homes/{home}")
    subprocess.run([vmail, *args], env=env, check=True, capture_output=True)


events = []


def watch():
    c = http.client.HTTPConnection(host, int(port))
    c.request("GET", "/api/events", headers=headers)
    r = c.getresponse()
    assert r.status == 200, r.status
    buf = b""
    while chunk := r.read1(4096):
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            if b"event: inbox" in block:
                events.append(time.monotonic())


def get(path):
    c = http.client.HTTPConnection(host, int(port))
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    return r.status, r.read()


threading.Thread(target=watch, daemon=True).start()
while not events:
    time.sleep(0.01)
heard, left = [], []
for _ in range(RUNS):
    n = len(events)
    t0 = time.monotonic()
    cli("bob", "leave", "--replicas", "2", "--to", "alice", "t30.wav")
    left.append(time.monotonic() - t0)
    deadline = t0 + 30
    while len(events) == n:
        assert time.monotonic() < deadline, "the page never heard of the voicemail"
        time.sleep(0.001)
    heard.append(events[n] - t0)
    time.sleep(0.3)

status, body = get("/api/inbox")
ids = [v["id"] for v in json.loads(body)]
assert len(ids) >= 2 * (RUNS // 2), ids
page, fetch = [], []
os.makedirs("out", exist_ok=True)
for i in range(RUNS // 2):
    t = time.monotonic()
    status, audio = get(f"/api/voicemail/{ids[2 * i]}/audio")
    page.append(time.monotonic() - t)
    assert status == 200 and len(audio) == 960044, (status, len(audio))
    t = time.monotonic()
    cli("alice", "fetch", ids[2 * i + 1], "--out", "out")
    fetch.append(time.monotonic() - t)

ms = lambda xs: f"{statistics.median(xs) * 1e3:.1f}"
print("| measure | median ms |\n|---|---:|")
print(f"| bob's `vmail leave` (30 s WAV, 2 replicas), {RUNS} runs | {ms(left)} |")
print(f"| from its start until the page's event stream says `inbox` | {ms(heard)} |")
print(f"| **page event / leave command** | **{statistics.median(heard) / statistics.median(left):.2f}** |")
print(f"| `GET /api/voicemail/ID/audio` (960,044 bytes), {RUNS // 2} runs | {ms(page)} |")
print(f"| `vmail fetch ID` of another of the same size (process, fetch, write, ack) | {ms(fetch)} |")
print(f"| **page fetch / CLI fetch** | **{statistics.median(page) / statistics.median(fetch):.2f}** |")
