"""The GRU recurrence on CPU over length-sorted packed sequences, with a hand-written backward.

torch's CPU GRU spends about half its time outside the matrix products that do the work: its
packed-sequence backward copies hidden states around (about 8x slower than the padded one), and
its padded backward computes the recurrent weight's gradient as one small product per time step,
added up one by one, over padding too. Here, with rows sorted by length (longest first), the rows
still running at step t are the first `batch_sizes[t]`, so each step works on a prefix of one
buffer and padding costs nothing; the backward keeps every step's gate gradients and forms the
weight gradient as one large product at the end. Same parameters, same equations as `nn.GRU`
(gates r, z, n in that order; n = tanh(W_in x + b_in + r * (W_hn h + b_hn))).

On a GPU the encoder uses cuDNN's packed GRU instead (one fused kernel per layer).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence


def _starts(batch_sizes: list[int]) -> list[int]:
    starts, s = [], 0
    for bs in batch_sizes:
        starts.append(s)
        s += bs
    return starts


def _final_hidden(gi: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, batch_sizes: list[int]) -> torch.Tensor:
    """Inference: each row's hidden state after its last step, (batch_sizes[0], H), sorted order.
    One (B, H) buffer updated in place: a row that has ended keeps its last state."""
    H = w_hh.shape[1]
    h = gi.new_zeros(batch_sizes[0], H)
    w_t = w_hh.t()
    s = 0
    for bs in batch_sizes:
        hp = h[:bs]
        gh = torch.addmm(b_hh, hp, w_t)
        g = gi[s : s + bs]
        rz = torch.sigmoid(g[:, : 2 * H] + gh[:, : 2 * H])
        n = torch.tanh(torch.addcmul(g[:, 2 * H :], rz[:, :H], gh[:, 2 * H :]))
        torch.addcmul(n, rz[:, H:], hp - n, out=hp)
        s += bs
    return h


class _Recurrence(torch.autograd.Function):
    """gi (N, 3H): the input projections of the packed events, time-major; -> out (N, H), the
    hidden state after every event, in the same layout."""

    @staticmethod
    def forward(ctx, gi, w_hh, b_hh, batch_sizes):
        N, H = gi.shape[0], w_hh.shape[1]
        out = gi.new_empty(N, H)
        gates = gi.new_empty(N, 3 * H)  # r, z and the recurrent part of n (W_hn h + b_hn), kept for backward
        n = gi.new_empty(N, H)
        diff = gi.new_empty(N, H)  # h_{t-1} - n_t, the z gate's derivative
        w_t = w_hh.t()
        h = gi.new_zeros(batch_sizes[0], H)
        s = 0
        for bs in batch_sizes:
            e = s + bs
            hp, g, gt = h[:bs], gi[s:e], gates[s:e]
            torch.addmm(b_hh, hp, w_t, out=gt)
            gt[:, : 2 * H].add_(g[:, : 2 * H]).sigmoid_()
            torch.addcmul(g[:, 2 * H :], gt[:, :H], gt[:, 2 * H :], out=n[s:e]).tanh_()
            torch.sub(hp, n[s:e], out=diff[s:e])
            torch.addcmul(n[s:e], gt[:, H : 2 * H], diff[s:e], out=out[s:e])
            h = out[s:e]
            s = e
        ctx.batch_sizes = batch_sizes
        ctx.save_for_backward(w_hh, gates, n, diff, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        w_hh, gates, n, diff, out = ctx.saved_tensors
        batch_sizes = ctx.batch_sizes
        starts = _starts(batch_sizes)
        N, H = out.shape
        grad_out = grad_out.contiguous()
        # Pre-activation gradients, columns [n (recurrent) | r | z | n (input)]: the first three are
        # the recurrent ones (with W_hh's rows permuted to n, r, z to match) and the last three the
        # input ones in W_ih's r, z, n order, both plain views of one buffer.
        d = out.new_empty(N, 4 * H)
        d_rec, d_in = d[:, : 3 * H], d[:, H:]
        w_perm = torch.cat([w_hh[2 * H :], w_hh[: 2 * H]])
        dh = out.new_zeros(batch_sizes[0], H)  # rows past the current prefix have no future yet
        for t in range(len(batch_sizes) - 1, -1, -1):
            bs, s = batch_sizes[t], starts[t]
            e = s + bs
            gt, nt = gates[s:e], n[s:e]
            r, z, dt = gt[:, :H], gt[:, H : 2 * H], d[s:e]
            dht = dh[:bs] + grad_out[s:e]
            dhz = dht * z
            dn = torch.mul(dht - dhz, torch.addcmul(torch.ones_like(nt), nt, nt, value=-1), out=dt[:, 3 * H :])
            torch.mul(dht * diff[s:e], torch.addcmul(z, z, z, value=-1), out=dt[:, 2 * H : 3 * H])
            torch.mul(dn * gt[:, 2 * H :], torch.addcmul(r, r, r, value=-1), out=dt[:, H : 2 * H])
            torch.mul(dn, r, out=dt[:, :H])
            torch.addmm(dhz, d_rec[s:e], w_perm, out=dh[:bs])
        # h_{t-1} of every packed event from step 1 on: the first batch_sizes[t] rows of step t - 1
        # (step 0 starts from h = 0 and adds nothing to the weight gradient)
        if len(batch_sizes) > 1:
            prev = torch.cat([torch.arange(starts[t - 1], starts[t - 1] + batch_sizes[t])
                              for t in range(1, len(batch_sizes))])
            d_w = d_rec[batch_sizes[0] :].t() @ out[prev]
        else:
            d_w = torch.zeros_like(w_hh)
        d_b = d_rec.sum(0)
        return d_in, torch.cat([d_w[H:], d_w[:H]]), torch.cat([d_b[H:], d_b[:H]]), None


def gru_last_hidden(rnn: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, F) padded, batch-first -> (B, H): the top layer's hidden state after each row's last
    valid event (a length of 0 counts as 1), with or without gradients. Runs in the weights' dtype
    with autocast off (the buffers it writes into are of one dtype)."""
    if torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return gru_last_hidden(rnn, x.to(rnn.weight_hh_l0.dtype), lengths)
    lengths = lengths.clamp_min(1).cpu()
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    batch_sizes = packed.batch_sizes.tolist()
    data = packed.data
    grad = torch.is_grad_enabled()
    for layer in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = (getattr(rnn, f"{k}_l{layer}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        gi = F.linear(data, w_ih, b_ih)
        last = layer == rnn.num_layers - 1
        if last and not grad:
            h = _final_hidden(gi, w_hh, b_hh, batch_sizes)
            break
        data = _Recurrence.apply(gi, w_hh, b_hh, batch_sizes)
        if not last and rnn.dropout and rnn.training:
            data = F.dropout(data, rnn.dropout, training=True)
    else:
        # row i (sorted) ends at step len_i - 1, packed position starts[len_i - 1] + i
        sorted_len = lengths[packed.sorted_indices]
        starts = torch.tensor(_starts(batch_sizes))
        h = data[(starts[sorted_len - 1] + torch.arange(len(sorted_len))).to(data.device)]
    return h.index_select(0, packed.unsorted_indices.to(h.device))
