"""Hostile clients against `charrnn serve` on loopback (issue 23): 1,000 connections that send nothing, then
500 of them sending headers and half a request body; the server runs with a limit of 1,024 open files (the
usual default). Prints, for each binary, how the server answered the 1,000 connections, how many sockets
it still held after WAIT seconds (15 by default: past the 10 s header and body timeouts), and whether a normal request
was answered during the flood and after it.

Usage: python benches/serve_hostile.py CHARRNN_BINARY [CHARRNN_BINARY ...]   (WAIT=15)
The model (one epoch of the textbook model on 10,000 characters: what it generates does not matter here) is
trained by the first binary. `make serve-hostile` builds charrnn and runs this.
"""
import json
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time

binaries = sys.argv[1:]
work = tempfile.mkdtemp()
model = os.path.join(work, "m")
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
subprocess.run([binaries[0], "train", "--corpus", os.path.join(root, "data", "yuanqu.txt"), "--limit-chars", "10000",
                "--epochs", "1", "--out", model, "-q", "--device", "cpu"], check=True,
               env=dict(os.environ, CHARRNN_CACHE=os.path.join(work, "c")))
WAIT = float(os.environ.get("WAIT", "15"))
CONNECTIONS, HALF_BODIES = 1000, 500
BODY = json.dumps({"prefix": "分开", "num_chars": 3}).encode()


def limit_files():
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def normal_request(host, port):
    """A 3-character greedy request on a fresh connection: its status line, or what went wrong."""
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(BODY), BODY))
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data.split(b"\r\n", 1)[0].decode() or "closed unanswered"
    except OSError as e:
        return f"no answer ({e.__class__.__name__})"


def run(binary):
    p = subprocess.Popen([binary, "serve", "--model", model, "--port", "0", "--device", "cpu"],
                         stderr=subprocess.PIPE, text=True, preexec_fn=limit_files)
    host, port = re.search(r"http://([\d.]+):(\d+)", p.stderr.readline()).groups()
    port = int(port)
    conns = []
    for _ in range(CONNECTIONS):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, port))
        conns.append(s)
    time.sleep(0.5)
    for s in conns[:HALF_BODIES]:
        try:
            s.send(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY[:10]))
        except OSError:
            pass
    during = normal_request(host, port)
    start = time.time()
    answers, closed = {}, set()
    watch = selectors.DefaultSelector()
    for s in conns:
        watch.register(s, selectors.EVENT_READ)
    while time.time() - start < WAIT:
        for key, _ in watch.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 "):
                code = data[9:12].decode()
                answers[code] = answers.get(code, 0) + 1
            if not data:
                closed.add(s)
                watch.unregister(s)
    after = normal_request(host, port)
    # The server's own sockets, less the one it listens on: the connections it holds.
    held = sum(os.readlink(f"/proc/{p.pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{p.pid}/fd")) - 1
    for s in conns:
        s.close()
    p.terminate()
    p.wait(timeout=30)
    label = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    codes = ", ".join(f"{n} x {c}" for c, n in sorted(answers.items())) or "none"
    print(f"| {binary} ({label}) | {codes} | {len(closed)} | {held} | {during} | {after} |", flush=True)


cpu = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")][0]
print(f"CPU: {cpu}, {os.cpu_count()} cores; {CONNECTIONS} connections that send nothing, {HALF_BODIES} of them then "
      f"half a body; server limited to 1,024 open files; counted {WAIT:g} s after the flood (sockets: its own besides the listener, signal pipes included; a refusal closed at once "
      f"may reach its client as a reset, its answer unread)")
print("| server | answers the 1,000 read | closed by the server | sockets the server holds | a request during | "
      "a request after |")
print("| --- | --- | ---: | ---: | --- | --- |")
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
for b in binaries:
    run(b)
