"""Load benchmark of `charrnn serve` on loopback (issue 17): a bounded number of generation requests
(200 sampled characters each, temperature 1, a seed per request) from 1, 8 and 64 concurrent clients, against
a server that batches (--max-batch 64) and one that generates one request at a time (--max-batch 1).
Prints requests per second, generated characters per second and the p50 / p99 latency of each setting.

Usage: python benches/serve_load.py CHARRNN_BINARY [MODEL_DIR]   (REQUESTS=192 requests per setting)
Without MODEL_DIR it trains the textbook model for one epoch (hidden 256, vocabulary 1,757; generation's speed
does not depend on how long a model trained). `make serve-load` builds charrnn and runs this.
"""
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

binary = sys.argv[1]
if len(sys.argv) > 2:
    model = sys.argv[2]
else:
    work = tempfile.mkdtemp()
    model = os.path.join(work, "m")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([binary, "train", "--corpus", os.path.join(root, "data", "yuanqu.txt"), "--limit-chars", "10000",
                    "--epochs", "1", "--out", model, "-q"], check=True, env=dict(os.environ, CHARRNN_CACHE=os.path.join(work, "c")))
total = int(os.environ.get("REQUESTS", "192"))
NUM_CHARS = 200


def serve(max_batch):
    p = subprocess.Popen([binary, "serve", "--model", model, "--port", "0", "--max-batch", str(max_batch),
                          "--queue", "128"], stderr=subprocess.PIPE, text=True)
    host, port = re.search(r"http://([\d.]+):(\d+)", p.stderr.readline()).groups()
    return p, host, int(port)


def run(host, port, clients):
    latencies, chars, lock = [], [0], threading.Lock()
    counter = iter(range(total))

    def client():
        conn = http.client.HTTPConnection(host, port)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body = json.dumps({"prefix": "分开", "num_chars": NUM_CHARS, "temperature": 1, "seed": i})
            start = time.perf_counter()
            conn.request("POST", "/v1/generate", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            elapsed = time.perf_counter() - start
            assert response.status == 200, answer
            with lock:
                latencies.append(elapsed)
                chars[0] += len(answer["samples"][0]["generated"])
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return total / wall, chars[0] / wall, statistics.median(latencies), p99


cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
name = re.search(r"Model name:\s*(.*)", cpu).group(1)
print("CPU: %s, %d cores; %d requests per setting, %d sampled characters each; loopback" % (name, os.cpu_count(), total, NUM_CHARS))
print("| server | clients | requests/s | characters/s | p50 latency (ms) | p99 latency (ms) |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for max_batch, label in [(64, "batching (--max-batch 64)"), (1, "one at a time (--max-batch 1)")]:
    server, host, port = serve(max_batch)
    try:
        for clients in [1, 8, 64]:
            rps, cps, p50, p99 = run(host, port, clients)
            print("| %s | %d | %.1f | %.0f | %.0f | %.0f |" % (label, clients, rps, cps, 1000 * p50, 1000 * p99), flush=True)
    finally:
        server.terminate()
        server.wait()
