"""Loss and gradients of one forward/backward pass of a charrnn cell, computed by PyTorch's own layers.

Usage: python cell_grads.py IN.json OUT.json
IN holds the cell ("rnn", "gru" or "lstm"), charrnn's parameters (W_xh [V,kH], W_hh [H,kH], b_h [kH], for a
GRU b_hn [H], W_hq [H,V], b_q [V]), a minibatch (inputs, targets: [batch, steps]) and the initial state
(h, and c for an LSTM: [batch, H]). The pass uses torch.nn.RNN / GRU / LSTM (gate orders r,z,n and i,f,g,o,
which charrnn shares), a torch.nn.Linear output layer and F.cross_entropy (mean).
OUT receives the loss and each parameter's gradient in charrnn's layout.
"""
import json
import sys

import torch
import torch.nn.functional as F
from refio import dump, tensor




def main():
    src = json.load(open(sys.argv[1]))
    cell = src["cell"]
    p = {k: tensor(src[k]) for k in ["W_xh", "W_hh", "b_h", "W_hq", "b_q"] + (["b_hn"] if cell == "gru" else [])}
    inputs = torch.tensor(src["inputs"], dtype=torch.long)
    targets = torch.tensor(src["targets"], dtype=torch.long)
    vocab, hidden = p["W_xh"].shape[0], p["W_hh"].shape[0]
    layer = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](vocab, hidden)
    out = torch.nn.Linear(hidden, vocab)
    with torch.no_grad():
        layer.weight_ih_l0.copy_(p["W_xh"].T)
        layer.weight_hh_l0.copy_(p["W_hh"].T)
        layer.bias_ih_l0.copy_(p["b_h"])
        layer.bias_hh_l0.zero_()
        if cell == "gru":  # charrnn's b_hn is the candidate's hidden-side bias, inside the reset product
            layer.bias_hh_l0[2 * hidden:].copy_(p["b_hn"])
        out.weight.copy_(p["W_hq"].T)
        out.bias.copy_(p["b_q"])
    state = tensor(src["h"]).unsqueeze(0)
    if cell == "lstm":
        state = (state, tensor(src["c"]).unsqueeze(0))

    x = F.one_hot(inputs.T, vocab).float()  # [steps, batch, V]
    hs, _ = layer(x, state)
    loss = F.cross_entropy(out(hs.reshape(-1, hidden)), targets.T.reshape(-1))
    loss.backward()

    result = {"loss": loss.item()}
    result["W_xh"] = dump(layer.weight_ih_l0.grad.T)
    result["W_hh"] = dump(layer.weight_hh_l0.grad.T)
    result["b_h"] = dump(layer.bias_ih_l0.grad)
    if cell == "gru":
        result["b_hn"] = dump(layer.bias_hh_l0.grad[2 * hidden:])
    result["W_hq"] = dump(out.weight.grad.T)
    result["b_q"] = dump(out.bias.grad)
    json.dump(result, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
