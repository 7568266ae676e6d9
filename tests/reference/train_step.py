"""One textbook char-RNN training step computed by PyTorch itself, as the reference for charrnn.

Usage: python train_step.py IN.json OUT.json
IN holds the initial weights (W_xh [V,H], W_hh [H,H], b_h [H], W_hq [H,V], b_q [V]), the minibatch
(inputs, targets: [batch, steps] indices), the initial state [batch, H], lr, clip, and optionally optimizer
and updates (how many steps to take on that same minibatch, default 1).
The step uses PyTorch's own pieces: torch.nn.RNN (tanh) for the recurrence, F.cross_entropy (mean),
torch.nn.utils.clip_grad_norm_ for clipping by the global L2 norm, and torch.optim.SGD (or torch.optim.Adam
with its defaults when IN says "optimizer": "adam").
OUT receives the first step's loss and clipped gradients and the weights after the last update, in charrnn's
layouts.
"""
import json
import sys

import torch
import torch.nn.functional as F
from refio import dump, tensor




def main():
    src = json.load(open(sys.argv[1]))
    w_xh, w_hh, b_h, w_hq, b_q = (tensor(src[k]) for k in ["W_xh", "W_hh", "b_h", "W_hq", "b_q"])
    inputs = torch.tensor(src["inputs"], dtype=torch.long)
    targets = torch.tensor(src["targets"], dtype=torch.long)
    h0 = tensor(src["state"])
    vocab, hidden = w_xh.shape

    rnn = torch.nn.RNN(vocab, hidden, nonlinearity="tanh")  # PyTorch's kernel: h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)
    out = torch.nn.Linear(hidden, vocab)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(w_xh.T)
        rnn.weight_hh_l0.copy_(w_hh.T)
        rnn.bias_ih_l0.copy_(b_h)
        rnn.bias_hh_l0.zero_()
        out.weight.copy_(w_hq.T)
        out.bias.copy_(b_q)
    rnn.bias_hh_l0.requires_grad_(False)  # the textbook step has a single hidden bias
    params = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, out.weight, out.bias]

    x = F.one_hot(inputs.T, vocab).float()  # [steps, batch, V]
    optimizer = (torch.optim.Adam if src.get("optimizer") == "adam" else torch.optim.SGD)(params, lr=src["lr"])
    for update in range(src.get("updates", 1)):
        optimizer.zero_grad()
        hs, _ = rnn(x, h0.unsqueeze(0))  # [steps, batch, H]
        logits = out(hs.reshape(-1, hidden))
        loss = F.cross_entropy(logits, targets.T.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, src["clip"])
        if update == 0:
            first_loss, grads = loss.item(), [p.grad.clone() for p in params]
        optimizer.step()

    # Back to charrnn's layouts: W_xh = weight_ih^T, W_hh = weight_hh^T, W_hq = weight^T.
    layout = [lambda t: t.T, lambda t: t.T, lambda t: t, lambda t: t.T, lambda t: t]
    names = ["W_xh", "W_hh", "b_h", "W_hq", "b_q"]
    result = {"loss": first_loss}
    for name, f, g, p in zip(names, layout, grads, params):
        result["grad_" + name] = dump(f(g))
        result[name] = dump(f(p))
    json.dump(result, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
