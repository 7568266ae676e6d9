"""A charrnn network computed by PyTorch's own layers, as the reference for charrnn's tests.

Usage: python network.py IN.json OUT.json
IN holds the cell ("rnn", "gru" or "lstm"), the layer count, charrnn's parameters by name (E [V,D] with an
embedding; per layer W_xh [I,kH], W_hh [H,kH], b_h [kH], for a GRU b_hn [H], with a "_l<k>" suffix above the
first layer; W_hq [H,V], b_q [V]), a minibatch (inputs, targets: [batch, steps]), the initial state (h, and c
for an LSTM: [layers, batch, H]), and for training the optimizer ("sgd" or "adam"), lr, updates and clip_share: the clipping threshold
is that share of the first gradient's global norm (so that clipping acts), returned as "clip".
The network is torch.nn.Embedding (or one-hot input), torch.nn.RNN / GRU / LSTM with num_layers layers (gate
orders r,z,n and i,f,g,o, which charrnn shares; bias_hh zero but for a GRU's candidate part, charrnn's b_hn),
a torch.nn.Linear output layer and F.cross_entropy (mean). Training clips with
torch.nn.utils.clip_grad_norm_ and steps torch.optim.SGD or torch.optim.Adam (its defaults), on the same
minibatch each time.
OUT receives PyTorch's flat-weight order ("flat": each recurrent tensor's name and shape), the logits of the first pass ([steps * batch, V], step-major), its final state, its loss and
each parameter's gradient (before clipping) in charrnn's layout, then the parameters after the updates.
"""
import json
import sys

import torch
import torch.nn.functional as F
from refio import dump, tensor


def main():
    src = json.load(open(sys.argv[1]))
    cell, layers = src["cell"], src["layers"]
    inputs = torch.tensor(src["inputs"], dtype=torch.long)
    targets = torch.tensor(src["targets"], dtype=torch.long)
    vocab, hidden = tensor(src["W_hq"]).shape[1], tensor(src["W_hh"]).shape[0]
    embed = torch.nn.Embedding(vocab, tensor(src["E"]).shape[1]) if "E" in src else None
    width = embed.embedding_dim if embed else vocab
    rnn = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](width, hidden, num_layers=layers)
    out = torch.nn.Linear(hidden, vocab)
    suffix = lambda k: "" if k == 0 else f"_l{k}"
    with torch.no_grad():
        if embed:
            embed.weight.copy_(tensor(src["E"]))
        for k in range(layers):
            getattr(rnn, f"weight_ih_l{k}").copy_(tensor(src["W_xh" + suffix(k)]).T)
            getattr(rnn, f"weight_hh_l{k}").copy_(tensor(src["W_hh" + suffix(k)]).T)
            getattr(rnn, f"bias_ih_l{k}").copy_(tensor(src["b_h" + suffix(k)]))
            getattr(rnn, f"bias_hh_l{k}").zero_()
            if cell == "gru":  # charrnn's b_hn is the candidate's hidden-side bias, inside the reset product
                getattr(rnn, f"bias_hh_l{k}")[2 * hidden:].copy_(tensor(src["b_hn" + suffix(k)]))
            else:  # charrnn has no hidden-side bias: it stays zero
                getattr(rnn, f"bias_hh_l{k}").requires_grad_(False)
        out.weight.copy_(tensor(src["W_hq"]).T)
        out.bias.copy_(tensor(src["b_q"]))
    state = tensor(src["h"])
    if cell == "lstm":
        state = (state, tensor(src["c"]))

    # charrnn's parameters, in its saved order, as (name, tensor, to charrnn's layout, gradient selector).
    params = [("E", embed.weight, lambda t: t)] if embed else []
    for k in range(layers):
        params += [
            ("W_xh" + suffix(k), getattr(rnn, f"weight_ih_l{k}"), lambda t: t.T),
            ("W_hh" + suffix(k), getattr(rnn, f"weight_hh_l{k}"), lambda t: t.T),
            ("b_h" + suffix(k), getattr(rnn, f"bias_ih_l{k}"), lambda t: t),
        ]
        if cell == "gru":
            params.append(("b_hn" + suffix(k), getattr(rnn, f"bias_hh_l{k}"), lambda t: t[2 * hidden:]))
    params += [("W_hq", out.weight, lambda t: t.T), ("b_q", out.bias, lambda t: t)]
    trained = [p for _, p, _ in params]

    def forward():
        x = embed(inputs.T) if embed else F.one_hot(inputs.T, vocab).float()  # [steps, batch, I]
        hs, end = rnn(x, state)
        logits = out(hs.reshape(-1, hidden))
        return logits, end, F.cross_entropy(logits, targets.T.reshape(-1))

    def clean_grads():
        # A GRU's bias_hh holds charrnn's b_hn in its last third; the rest is not a charrnn parameter, so its
        # gradient is zeroed before clipping and stepping (with a zero gradient, SGD and Adam leave it at 0).
        if cell == "gru":
            for k in range(layers):
                getattr(rnn, f"bias_hh_l{k}").grad[: 2 * hidden] = 0

    logits, end, loss = forward()
    loss.backward()
    clean_grads()
    result = {"loss": loss.item(), "logits": dump(logits)}
    # PyTorch's flat-weight order (what cuDNN's one buffer holds, one tensor after another) and shapes.
    result["flat"] = [[name, list(getattr(rnn, name).shape)] for name in rnn._flat_weights_names]
    if cell == "lstm":
        result["end_h"], result["end_c"] = dump(end[0]), dump(end[1])
    else:
        result["end_h"] = dump(end)
    for name, p, layout in params:
        grad = p.grad[2 * hidden:] if name.startswith("b_hn") else layout(p.grad)
        result["grad_" + name] = dump(grad)

    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in trained)).item()
    result["clip"] = clip = src.get("clip_share", 1.0) * norm
    if src.get("updates", 0) > 0:
        optimizer = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[src["optimizer"]](trained, lr=src["lr"])
        for update in range(src["updates"]):
            if update > 0:
                optimizer.zero_grad()
                forward()[2].backward()
                clean_grads()
            torch.nn.utils.clip_grad_norm_(trained, clip)
            optimizer.step()
        for name, p, layout in params:
            result[name] = dump(p[2 * hidden:] if name.startswith("b_hn") else layout(p))
    json.dump(result, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
