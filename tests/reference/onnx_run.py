"""Runs a model that `charrnn export --onnx` wrote, with onnxruntime, as the tests' independent reader of it.

Usage: python onnx_run.py MODEL.onnx IN.json OUT.json
IN holds "text" (to score), "context" (the windows eval reads it in), "prefix" and "num_chars" (a greedy
continuation), "split" (where to cut the text's first window into two calls).
The model is first checked with the onnx package's checker. The text is encoded with the vocabulary of the
model's metadata (a line break as a space unless charrnn.keep_newlines says otherwise) and scored as `charrnn
eval` reads it: windows of "context" characters, each from a zero state, the last one shorter; the mean
cross-entropy of the next characters is computed here in float64 from the model's float32 logits.
OUT receives the metadata, that cross-entropy and the number of characters predicted, the greedy text, and
the largest difference in logits and final state between reading the first window in one call and in two
calls that carry the state.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main():
    path, src = sys.argv[1], json.load(open(sys.argv[2]))
    onnx.checker.check_model(onnx.load(path), full_check=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    vocab = meta["charrnn.vocab"]
    keep_newlines = meta["charrnn.keep_newlines"] == "true"
    index = {c: i for i, c in enumerate(vocab)}
    names = [i.name for i in session.get_inputs()]
    layers, hidden = session.get_inputs()[1].shape[0], session.get_inputs()[1].shape[2]

    def encode(text):
        if not keep_newlines:
            text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
        return [index[c] for c in text]

    def zeros(batch):
        return {n: np.zeros((layers, batch, hidden), np.float32) for n in names[1:]}

    def run(chars, state):
        outs = session.run(None, {"chars": np.array(chars, np.int64), **state})
        return outs[0], dict(zip(names[1:], outs[1:]))

    def log_softmax(x):
        x = x.astype(np.float64)
        m = x.max(axis=-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))

    ids = encode(src["text"])
    n, w = len(ids) - 1, src["context"]
    total = 0.0
    starts = [(s, w) for s in range(0, n - n % w, w)] + ([(n - n % w, n % w)] if n % w else [])
    for start, length in starts:
        logits, _ = run([ids[start : start + length]], zeros(1))
        targets = ids[start + 1 : start + length + 1]
        total -= log_softmax(logits[0])[np.arange(length), targets].sum()

    # Greedy continuation, one character per call, the state carried.
    prefix = encode(src["prefix"])
    logits, state = run([prefix], zeros(1))
    out = list(prefix)
    for _ in range(src["num_chars"]):
        out.append(int(logits[0, -1].argmax()))
        logits, state = run([[out[-1]]], state)

    # The first window in one call, and in two calls that carry the state.
    window, k = ids[: w + 1], src["split"]
    whole, end = run([window], zeros(1))
    first, mid = run([window[:k]], zeros(1))
    second, end2 = run([window[k:]], mid)
    carry = max(
        float(np.abs(whole - np.concatenate([first, second], axis=1)).max()),
        *(float(np.abs(end[s] - end2[s]).max()) for s in end),
    )
    json.dump(
        {
            "vocab": vocab,
            "keep_newlines": keep_newlines,
            "model": json.loads(meta["charrnn.model"]),
            "inputs": names,
            "outputs": [o.name for o in session.get_outputs()],
            "cross_entropy": total / n,
            "predictions": n,
            "greedy": "".join(vocab[i] for i in out),
            "carry_diff": carry,
        },
        open(sys.argv[3], "w"),
    )


main()
