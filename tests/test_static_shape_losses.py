"""The step's losses at shapes fixed by the batch's layout (no selection by the data, which waits
for a GPU): the margin loss's positive pairs come from the slice collator, its hard negatives are
masked at a fixed (N, k); the supervised loss masks unlabelled rows; the GPU GRU sorts by the
host lengths. Each gives what the selecting form gave."""
import numpy as np
import pytest
import torch
from helpers import assert_same_values_and_gradients, torch_gru_reference

from mlem_ray.data import EventSequences
from mlem_ray.data.batching import SliceCollator, SliceSampler, slice_pairs
from mlem_ray.models.encoders import packed_last_hidden
from mlem_ray.objectives import MarginLoss, SupervisedObjective
from mlem_ray.objectives.coles import same_label_pairs


def margin_by_hand(e: torch.Tensor, labels: list, margin: float, neg_count: int) -> torch.Tensor:
    """The margin loss term by term, in float64: every same-label pair i < j, and for each row its
    `neg_count` nearest rows of other labels (fewer when there are fewer)."""
    u = torch.nn.functional.normalize(e.double(), dim=-1)
    n = len(labels)
    total = u.new_zeros(())
    for i in range(n):
        for j in range(i + 1, n):
            if labels[i] == labels[j]:
                total = total + (u[i] - u[j]).pow(2).sum()
        others = sorted((float((u[i] - u[j]).detach().pow(2).sum()), j) for j in range(n) if labels[j] != labels[i])
        for _, j in others[:neg_count]:
            d = (u[i] - u[j]).pow(2).sum().clamp_min(1e-12).sqrt()
            total = total + torch.relu(margin - d) ** 2
    return total


def test_slice_batches_carry_the_pairs_their_labels_give(pendulum_data):
    seqs = EventSequences.open(pendulum_data(60, seed=3))
    batch = SliceCollator(seqs, SliceSampler(3, 2, 8), seed=1)(np.array([5, 0, 17, 9]))
    assert torch.equal(batch.positive_pairs, same_label_pairs(batch.seq_index))
    assert batch.positive_pairs.shape == (4 * 3, 2)
    moved = batch.to("cpu")
    assert torch.equal(moved.positive_pairs, batch.positive_pairs)


@pytest.mark.parametrize("sequences, k, neg_count", [(6, 3, 5), (2, 4, 5), (1, 3, 2)])
def test_margin_loss_with_the_collated_pairs_is_the_loss_term_by_term(sequences, k, neg_count):
    """(2, 4, 5): each row has 4 rows of the other sequence, fewer than 5 negatives; (1, 3, 2): none."""
    g = torch.Generator().manual_seed(sequences)
    e = torch.randn(sequences * k, 6, generator=g, dtype=torch.float64)
    e[1] = e[0]  # two identical slices: a zero distance
    labels = torch.arange(sequences).repeat_interleave(k) + 40
    pairs = torch.from_numpy(slice_pairs(sequences, k))
    a, b = e.clone().requires_grad_(), e.clone().requires_grad_()
    got = MarginLoss(0.9, neg_count)(a, labels, pairs)
    want = margin_by_hand(b, labels.tolist(), 0.9, neg_count)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got.backward()
    want.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    # without the pairs (a caller that has only labels) the loss finds the same ones
    assert torch.equal(MarginLoss(0.9, neg_count)(e, labels), got.detach())


def test_supervised_loss_masks_unlabelled_rows_as_selecting_them_did():
    torch.manual_seed(0)

    class Rows(torch.nn.Module):  # an "encoder" that hands each row's features through
        out_dim = 3

        def forward(self, batch):
            return batch.features

    y = torch.tensor([0.5, float("nan"), -1.0, 2.0, float("nan")])
    batch = type("Batch", (), {"features": torch.randn(5, 3), "target": y})()
    keep = ~torch.isnan(y)
    for task, target in (("binary", (y > 0).float().where(keep, y)), ("multiclass", y.abs().round().where(keep, y)),
                         ("regression", y)):
        objective = SupervisedObjective(Rows(), task, num_classes=3, target_mean=0.2, target_std=1.5)
        batch.target = target
        got = objective(batch)["loss"]
        out, t = objective.head(batch.features[keep]), target[keep]
        if task == "binary":
            want = torch.nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1), t)
        elif task == "multiclass":
            want = torch.nn.functional.cross_entropy(out, t.long())
        else:
            want = torch.nn.functional.mse_loss(out.squeeze(-1), (t - 0.2) / 1.5)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_gpu_gru_path_sorted_on_the_host_gives_torchs_unsorted_packing():
    """packed_last_hidden (what the encoder runs on a GPU), here on CPU tensors: the same
    embeddings and gradients as torch's own enforce_sorted=False packing."""
    rnn, x, lengths, want = torch_gru_reference(4, 5, 2, [3, 9, 0, 1, 9, 6])
    assert_same_values_and_gradients(packed_last_hidden(rnn, x, lengths), want, [x, *rnn.parameters()])
