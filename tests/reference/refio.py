"""Tensors in and out of the JSON files the charrnn tests exchange with the reference scripts."""
import torch


def tensor(d):
    """A float32 tensor from {"shape": [...], "data": [...]}."""
    return torch.tensor(d["data"], dtype=torch.float64).reshape(d["shape"]).float()


def dump(t):
    """{"shape": [...], "data": [...]} of a tensor, in double precision."""
    return {"shape": list(t.shape), "data": t.detach().double().reshape(-1).tolist()}
