"""The textbook char-RNN (Dive into Deep Learning, 1st ed., "RNN from scratch") in plain PyTorch.

The reference charrnn's training curve is compared with (benches/compare_curves.sh): same corpus handling
(newlines -> spaces, first N characters), same samplers, initialisation N(0, 0.01), tanh RNN step, mean
cross-entropy, clipping by the global gradient norm, SGD, greedy prediction, and the same report lines.

Usage: python benches/reference_textbook.py --corpus FILE [--limit-chars 10000] [--sampling random|consecutive]
       [--epochs 250] [--hidden 256] [--steps 35] [--batch 32] [--lr 100] [--clip 0.01] [--seed 0] [--threads N]
       [--model scratch|nn] [--pred-len 50] [--predict N] [--device cpu|cuda] [--dtype fp32|bf16]
--model nn runs the same step on torch.nn.RNN (oneDNN's fused kernel, cuDNN's on a GPU) and nn.Linear with the
same parameters; --predict N skips training and times greedy prediction of N characters (for
benches/compare_speed.sh); --dtype bf16 (with --model nn) runs the output layer's product under
torch.autocast(dtype=torch.bfloat16), as charrnn's --dtype bf16 does (the recurrence stays float32).

Timing is charrnn's: the clock is read with time.perf_counter() and printed to the microsecond; the loss is
summed on the device and read back once an epoch, and gradients are clipped by the factor min(1, clip / norm)
computed on the device, so that nothing waits for the host within an epoch (on a GPU each `.item()` or
`if norm > clip` is a synchronisation charrnn does not make).
"""
import contextlib
import argparse
import math
import random
import time

import torch
import torch.nn.functional as F


def load(path, limit):
    text = open(path, encoding="utf-8").read().replace("\n", " ").replace("\r", " ")
    text = text[:limit] if limit else text
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return [index[c] for c in text], vocab, index


def random_batches(ids, batch, steps, rng):
    examples = list(range((len(ids) - 1) // steps))
    rng.shuffle(examples)
    for i in range(len(examples) // batch):
        starts = [e * steps for e in examples[i * batch:(i + 1) * batch]]
        x = torch.tensor([ids[s:s + steps] for s in starts])
        y = torch.tensor([ids[s + 1:s + steps + 1] for s in starts])
        yield x, y


def consecutive_batches(ids, batch, steps):
    row = len(ids) // batch
    data = torch.tensor(ids[:batch * row]).view(batch, row)
    for i in range((row - 1) // steps):
        yield data[:, i * steps:(i + 1) * steps], data[:, i * steps + 1:(i + 1) * steps + 1]


def rnn(inputs, h, params):
    w_xh, w_hh, b_h, w_hq, b_q = params
    outputs = []
    for x in inputs:  # inputs: [steps, batch, V] one-hot
        h = torch.tanh(x @ w_xh + h @ w_hh + b_h)
        outputs.append(h @ w_hq + b_q)
    return torch.cat(outputs), h


def nn_rnn(params, output_precision):
    """The same step on torch.nn.RNN and a batched output layer, sharing `params` (transposed views); the output
    layer's product runs inside `output_precision()` (a no-op, or bfloat16 autocast)."""
    w_xh, w_hh, b_h, w_hq, b_q = params
    zero = torch.zeros_like(b_h)

    def run(inputs, h):
        ys, h_last = torch._VF.rnn_tanh(inputs, h.unsqueeze(0), [w_xh.T.contiguous(), w_hh.T.contiguous(), b_h, zero], True, 1, 0.0, True, False, False)
        with output_precision():
            logits = ys.reshape(-1, ys.shape[-1]) @ w_hq + b_q
        return logits, h_last[0]
    return run


def predict(prefix, n, params, vocab, index, hidden):
    device = params[0].device
    h = torch.zeros(1, hidden, device=device)
    out = [index[prefix[0]]]
    with torch.no_grad():
        for t in range(len(prefix) + n - 1):
            x = F.one_hot(torch.tensor([out[-1]], device=device), len(vocab)).float()
            y, h = rnn([x], h, params)
            out.append(index[prefix[t + 1]] if t < len(prefix) - 1 else int(y.argmax(1)))
    return "".join(vocab[i] for i in out)


def arguments(limit_chars, epochs, lr):
    """The flags both reference scripts share, with charrnn's names; the defaults that differ are given."""
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", required=True)
    p.add_argument("--limit-chars", type=int, default=limit_chars)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--clip", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    return p


def prepare(a):
    """Applies the shared flags: threads, seeds; returns the shuffle generator and the corpus (ids, vocab, index)."""
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    return (random.Random(a.seed),) + load(a.corpus, a.limit_chars)


def main():
    p = arguments(limit_chars=10000, epochs=250, lr=100.0)
    p.add_argument("--sampling", choices=["random", "consecutive"], default="random")
    p.add_argument("--pred-period", type=int, default=50)
    p.add_argument("--prefix", action="append")
    p.add_argument("--pred-len", type=int, default=50)
    p.add_argument("--model", choices=["scratch", "nn"], default="scratch")
    p.add_argument("--predict", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    a = p.parse_args()
    rng, ids, vocab, index = prepare(a)
    v, h, dev = len(vocab), a.hidden, torch.device(a.device)
    params = [torch.randn(v, h) * 0.01, torch.randn(h, h) * 0.01, torch.zeros(h), torch.randn(h, v) * 0.01, torch.zeros(v)]
    params = [t.to(dev) for t in params]
    for t in params:
        t.requires_grad_(True)
    prefixes = [q for q in (a.prefix or ["分开", "不分开"]) if all(c in index for c in q)] or [vocab[ids[0]]]
    if a.predict:
        start = time.perf_counter()
        predict(prefixes[0], a.predict, params, vocab, index, h)
        print("predicted %d characters in %.6f sec" % (a.predict, time.perf_counter() - start))
        return
    if a.dtype == "bf16" and a.model != "nn":
        p.error("--dtype bf16 needs --model nn (the from-scratch loop is the textbook's, in float32)")
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.dtype == "bf16" else contextlib.nullcontext
    step = nn_rnn(params, autocast) if a.model == "nn" else (lambda x, s: rnn(x, s, params))
    for epoch in range(1, a.epochs + 1):
        start, loss_sum, n = time.perf_counter(), torch.zeros((), dtype=torch.float64, device=dev), 0
        state = torch.zeros(a.batch, h, device=dev)
        batches = random_batches(ids, a.batch, a.steps, rng) if a.sampling == "random" else consecutive_batches(ids, a.batch, a.steps)
        for x, y in batches:
            x, y = x.to(dev), y.to(dev)
            state = torch.zeros(a.batch, h, device=dev) if a.sampling == "random" else state.detach()
            logits, state = step(F.one_hot(x.T, v).float(), state)
            loss = F.cross_entropy(logits, y.T.reshape(-1))
            for t in params:
                t.grad = None
            loss.backward()
            with torch.no_grad():
                norm = torch.sqrt(sum((t.grad ** 2).sum() for t in params))
                factor = torch.clamp(a.clip / norm, max=1.0)
                for t in params:
                    t -= a.lr * (t.grad * factor)
            loss_sum, n = loss_sum + loss.detach(), n + 1
        mean = loss_sum.item() / n
        elapsed = time.perf_counter() - start
        if epoch % a.pred_period == 0:
            print("epoch %d, perplexity %f, time %.6f sec" % (epoch, math.exp(mean), elapsed), flush=True)
            for q in prefixes if a.pred_len else []:
                print(" -", predict(q, a.pred_len, params, vocab, index, h), flush=True)


if __name__ == "__main__":
    main()
