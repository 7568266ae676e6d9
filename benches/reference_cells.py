"""The budget of benches/compare_cells.sh, trained with PyTorch's own modules.

nn.Embedding (or one-hot) -> nn.RNN / nn.GRU / nn.LSTM (num_layers, dropout between layers) -> dropout ->
nn.Linear, Adam, clipping by the global gradient norm, the textbook's random sampler, the last --val-frac of
the corpus held out and scored each epoch in windows of --steps characters from a zero state (as charrnn's
validation does). PyTorch's default (uniform) initialisation. Prints charrnn's report lines, then, for the
best epoch, the held-out cross-entropy split by how often each target character occurs in the trained part.

Usage: python benches/reference_cells.py --corpus FILE [--limit-chars 50000 (0: all)] [--cell gru] [--layers 2]
       [--embed 64] [--dropout 0] [--epochs 10] [--lr 0.002] [--clip 0.01] [--seed 0] [--threads N]
       [--device cpu|cuda]
"""
import math
import time
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_textbook import arguments, prepare, random_batches


class Net(nn.Module):
    def __init__(self, v, cell, hidden, layers, embed, dropout):
        super().__init__()
        self.v = v
        self.embed = nn.Embedding(v, embed) if embed else None
        kind = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = kind(embed or v, hidden, layers, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, v)

    def forward(self, x):  # x: [steps, batch] ids -> logits [steps * batch, V]
        inp = self.embed(x) if self.embed is not None else F.one_hot(x, self.v).float()
        y, _ = self.rnn(inp)
        return self.out(self.drop(y)).reshape(-1, self.v)


def held_out_losses(net, ids, steps, device):
    """Per-position cross-entropy of ids[1:] given windows of `steps` characters from a zero state."""
    net.eval()
    losses = []
    with torch.no_grad():
        for s in range(0, len(ids) - 1, steps):
            x = torch.tensor(ids[s:s + steps][: len(ids) - 1 - s], device=device).view(-1, 1)
            y = torch.tensor(ids[s + 1:s + 1 + len(x)], device=device)
            losses += F.cross_entropy(net(x), y, reduction="none").tolist()
    net.train()
    return losses


def main():
    p = arguments(limit_chars=50000, epochs=10, lr=0.002)
    p.add_argument("--val-frac", type=float, default=0.1)
    p.add_argument("--cell", choices=["rnn", "gru", "lstm"], default="gru")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    device = torch.device(a.device)
    rng, ids, vocab, _ = prepare(a)
    n_val = round(len(ids) * a.val_frac)
    train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    net = Net(len(vocab), a.cell, a.hidden, a.layers, a.embed, a.dropout).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    best = (math.inf, 0, None)
    for epoch in range(1, a.epochs + 1):
        # Timed as charrnn times an epoch: the loss summed on the device and read back once, the clock read
        # with perf_counter after that (clip_grad_norm_ scales on the device, with no host synchronisation).
        start, loss_sum, n = time.perf_counter(), torch.zeros((), dtype=torch.float64, device=device), 0
        for x, y in random_batches(train, a.batch, a.steps, rng):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(net(x.T), y.T.reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), a.clip)
            opt.step()
            loss_sum, n = loss_sum + loss.detach(), n + 1
        loss_sum = loss_sum.item()
        secs = time.perf_counter() - start
        losses = held_out_losses(net, val, a.steps, device)
        val_ppl = math.exp(sum(losses) / len(losses))
        if val_ppl < best[0]:
            best = (val_ppl, epoch, losses)
        print("epoch %d, perplexity %f, val perplexity %f, time %.6f sec" % (epoch, math.exp(loss_sum / n), val_ppl, secs), flush=True)
    # Where the held-out loss comes from: target characters grouped by their count in the trained part.
    counts = Counter(train)
    groups = [("unseen", 0, 0), ("1-4", 1, 4), ("5-49", 5, 49), ("50+", 50, math.inf)]
    print("best epoch %d, val perplexity %.2f; held-out loss by the target's count in training:" % (best[1], best[0]))
    total = sum(best[2])
    for name, lo, hi in groups:
        sel = [l for c, l in zip(val[1:], best[2]) if lo <= counts[c] <= hi]
        if sel:
            print("  %-6s %5.1f%% of targets, %5.1f%% of the loss, mean %.2f nats" %
                  (name, 100 * len(sel) / len(best[2]), 100 * sum(sel) / total, sum(sel) / len(sel)))


if __name__ == "__main__":
    main()
