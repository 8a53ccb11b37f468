"""Losses on hand-computed cases, the encoders' padding invariance, MLEM's frozen teacher, the
training loop (resume, NaN stop) and the pretrain/evaluate/embed CLI."""
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import assert_same_values_and_gradients, torch_gru_reference

from mlem_ray.cli import main
from mlem_ray.config import ConfigError, make_config, parse_overrides
from mlem_ray.data import FullCollator, EventSequences
from mlem_ray.data.batching import PaddedBatch
from mlem_ray.models.build import build_encoder
from mlem_ray.models.encoders import GRUEncoder
from mlem_ray.models.recurrence import gru_last_hidden
from mlem_ray.objectives import InfoNCELoss, MarginLoss, ReconstructionLoss, SigLIPLoss
from mlem_ray.training import LocalReporter, NonFiniteLossError, train
from mlem_ray.training.loop import build_training_objective, _param_groups

# ---------- losses on hand-computed cases ----------


def test_siglip_2x2_by_hand():
    a = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # normalised: (1, 0), (s, s) with s = 1/sqrt 2
    b = torch.tensor([[0.0, 2.0], [1.0, 0.0]])  # normalised: (0, 1), (1, 0)
    loss = SigLIPLoss(t_init=math.log(10.0), b_init=-10.0)(a, b)
    s = 1 / math.sqrt(2)
    dots = [[0.0, 1.0], [s, s]]
    nls = lambda x: math.log1p(math.exp(-x))  # -log sigmoid(x)
    expected = 0.0
    for i in range(2):
        for j in range(2):
            logit = 10.0 * dots[i][j] - 10.0
            expected += nls(logit if i == j else -logit)
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)


def test_margin_loss_three_points_by_hand():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # positive (0, 1): d^2 = 2. Negatives with margin 1.5: d(0,2) = 2 -> 0; d(1,2) = sqrt 2 counted
    # once from anchor 1 and once from anchor 2.
    loss = MarginLoss(margin=1.5, neg_count=5)(e, labels)
    assert loss.item() == pytest.approx(2.0 + 2 * (1.5 - math.sqrt(2)) ** 2, rel=1e-5)
    # only the hardest negative per anchor with neg_count=1: anchor 2 keeps d(2,1) = sqrt 2 (closer)
    assert MarginLoss(1.5, 1)(e, labels).item() == pytest.approx(2.0 + 2 * (1.5 - math.sqrt(2)) ** 2, rel=1e-5)
    # scale of the input does not matter (L2-normalised)
    assert MarginLoss(1.5, 5)(3 * e, labels).item() == pytest.approx(loss.item(), rel=1e-5)


def test_infonce_by_hand():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    loss = InfoNCELoss(temperature=1.0)(e, labels)
    # anchor 0: positive 1 (cos 0), negative 2 (cos -1); anchor 1: positive 0 (cos 0), negative 2 (cos 0);
    # anchor 2 has no positive and is skipped
    expected = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_hybrid_contrastive_term_keeps_its_scale_as_the_batch_grows():
    """The hybrid adds its contrastive term to a per-row mean with fixed weights, so that term must
    not grow with the global batch (more workers, bigger batches) the way CoLES's summed margin loss
    does, or w_con would mean something else at every batch size."""
    from mlem_ray.objectives import _contrastive

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(64, 32, generator=g)
    z = (centres[:, None, :] + 0.5 * torch.randn(64, 5, 32, generator=g)).reshape(-1, 32)  # 64 sequences x 5 slices
    labels = torch.arange(64).repeat_interleave(5)
    half = slice(0, 32 * 5)
    margin, hybrid = _contrastive(make_config("coles"), 32), _contrastive(make_config("hybrid"), 32)
    assert margin(z, labels).item() / margin(z[half], labels[half]).item() > 1.8  # a sum over pairs
    # a mean over anchors: twice the negatives add at most about log 2
    assert abs(hybrid(z, labels).item() - hybrid(z[half], labels[half]).item()) < math.log(2) + 0.1


def test_reconstruction_masks_padding_and_nan_but_keeps_zeros():
    # one sequence of 2 real events + 1 padding; one categorical field (3 codes), one numeric field
    mask = torch.tensor([[True, True, False]])
    batch = PaddedBatch(
        cat=torch.tensor([[[2], [1], [0]]]), num=torch.tensor([[[0.0], [0.0], [0.0]]]),
        num_mask=torch.tensor([[[True], [False], [False]]]),  # event 1's value is NaN; event 0's is a true 0
        dt=torch.tensor([[0.0, 2.0, 0.0]]), mask=mask, lengths=torch.tensor([2]), seq_index=torch.tensor([0]),
    )
    logits = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [5.0, 5.0, 5.0]]])
    pred = {"cat": [logits], "num": torch.tensor([[[0.5], [9.0], [9.0]]]), "dt": torch.tensor([[7.0, 1.0, 9.0]])}
    z = torch.tensor([[1.0, -2.0]])
    out = ReconstructionLoss(w_num=1, w_cat=1, w_time=10, w_l1=1e-3, time_encoding="log1p")(pred, batch, z)
    ce = (-(1 - math.log(2 + math.e)) - (2 - math.log(2 + math.exp(2)))) / 2
    mse_num = 0.5**2  # only event 0 (a true zero) counts
    mse_dt = (1.0 - math.log1p(2.0)) ** 2  # only event 1 (event 0's gap is 0 by definition)
    assert out["rec_cat"].item() == pytest.approx(ce, rel=1e-5)
    assert out["rec_num"].item() == pytest.approx(mse_num, rel=1e-6)
    assert out["rec_time"].item() == pytest.approx(mse_dt, rel=1e-5)
    assert out["rec"].item() == pytest.approx(ce + mse_num + 10 * mse_dt + 1e-3 * 3.0, rel=1e-5)


# ---------- data for model and loop tests ----------


@pytest.fixture(scope="module")
def tiny(pendulum_data):
    return pendulum_data(240, seed=3)


SMALL = {"model.hidden": 16, "model.decoder_width": 16, "model.decoder_layers": 1, "model.decoder_ff": 32,
         "data.batch_size": 16, "data.slice_min": 5, "data.slice_max": 20, "train.epochs": 2,
         "train.steps_per_epoch": 3}


def cfg_for(method, data, **extra):
    return make_config(method, {**SMALL, "data.path": str(data), **extra})


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_embedding_ignores_padding(tiny, encoder):
    seqs = EventSequences.open(tiny)
    cfg = cfg_for("coles", tiny, **{"model.encoder": encoder})
    torch.manual_seed(0)
    enc = build_encoder(cfg, seqs.schema, 200).eval()
    rows = np.array([0, 1, 2])
    full = FullCollator(seqs, max_len=8)(rows)  # 8 events each
    keep = torch.tensor([8, 5, 3])  # make the batch ragged: rows 1 and 2 end early

    def padded(T, width=8):
        b = full
        valid = torch.arange(width)[None, :] < keep[:, None]
        cut = lambda x: x * valid.unsqueeze(-1).to(x.dtype) if x.dim() == 3 else x * valid.to(x.dtype)
        grow = lambda x: torch.nn.functional.pad(x, (0, 0, 0, T - width) if x.dim() == 3 else (0, T - width))
        return PaddedBatch(grow(cut(b.cat)), grow(cut(b.num)), grow(cut(b.num_mask)), grow(cut(b.dt)),
                           grow(cut(b.mask)), keep.clone(), b.seq_index)

    with torch.no_grad():
        z10, z50 = enc(padded(10)), enc(padded(50))
    z_grad = enc(padded(50))  # the training path (the GRU takes another route with gradients)
    torch.testing.assert_close(z10, z50, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z_grad.detach(), z50, atol=1e-5, rtol=1e-5)
    # row 1 on its own, with no padding at all
    alone = PaddedBatch(*(x[1:2, :5] for x in (full.cat, full.num, full.num_mask, full.dt, full.mask)),
                        torch.tensor([5]), full.seq_index[1:2])
    with torch.no_grad():
        torch.testing.assert_close(enc(alone)[0], z50[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_cpu_recurrence_matches_torch_gru_values_and_gradients(layers):
    """The hand-written CPU recurrence (models/recurrence.py) must give torch's GRU embedding and
    the same gradients for the input and every weight, in float64, rows of any length (0 included)
    in any order, with and without autograd."""
    rnn, x, lengths, ref = torch_gru_reference(5, 7, layers, [3, 12, 0, 1, 12, 7, 5, 1, 9])
    assert_same_values_and_gradients(gru_last_hidden(rnn, x, lengths), ref, [x, *rnn.parameters()])
    with torch.no_grad():
        torch.testing.assert_close(gru_last_hidden(rnn, x, lengths), ref.detach(), atol=1e-12, rtol=1e-12)
    enc = GRUEncoder(5, 7, layers)
    enc.rnn.load_state_dict({k: v.float() for k, v in rnn.state_dict().items()})
    torch.testing.assert_close(enc(x.detach().float(), None, lengths), ref.detach().float(), atol=1e-5, rtol=1e-5)


def test_mlem_teacher_gets_no_gradient_and_t_b_train_without_decay(tiny, tmp_path):
    run = tmp_path / "teacher"
    train(cfg_for("coles", tiny), LocalReporter(run, stream=None))
    cfg = cfg_for("mlem", tiny, **{"objective.teacher": str(run / "best"), "optim.weight_decay": 0.5})
    seqs = EventSequences.open(tiny)
    objective = build_training_objective(cfg, seqs, 200, torch.device("cpu"))
    teacher_before = {k: v.clone() for k, v in objective.teacher.state_dict().items()}
    groups = _param_groups(objective, 0.5)
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert len(no_decay) == 1 and {id(p) for p in no_decay[0]["params"]} == {id(objective.siglip.t), id(objective.siglip.b)}
    opt = torch.optim.AdamW(groups, lr=0.05)
    objective.train()
    assert not objective.teacher.training
    batch = FullCollator(seqs)(seqs.indices("train")[:16])
    t0, b0 = objective.siglip.t.item(), objective.siglip.b.item()
    out = objective(batch)
    out["loss"].backward()
    assert all(p.grad is None for p in objective.teacher.parameters())
    assert objective.siglip.t.grad is not None and objective.siglip.b.grad is not None
    opt.step()
    assert objective.siglip.t.item() != t0 and objective.siglip.b.item() != b0
    for k, v in objective.teacher.state_dict().items():
        torch.testing.assert_close(v, teacher_before[k])


class Recorder:
    def __init__(self, inner=None):
        self.rows, self.inner = [], inner

    def report(self, metrics, checkpoint):
        self.rows.append(metrics)
        if self.inner is not None:
            self.inner.report(metrics, checkpoint)


@pytest.mark.parametrize("method", ["coles", "generative"])
def test_resume_continues_with_the_same_losses(tiny, tmp_path, method):
    extra = {"train.epochs": 4, "model.dropout": 0.1, "model.embedding_dropout": 0.1}
    full = Recorder()
    train(cfg_for(method, tiny, **extra), Recorder(LocalReporter(tmp_path / "full", stream=None)).__class__(full))
    first = Recorder(LocalReporter(tmp_path / "part", stream=None))
    train(cfg_for(method, tiny, **{**extra, "train.epochs": 2}), first)
    second = Recorder(LocalReporter(tmp_path / "part", stream=None))
    train(cfg_for(method, tiny, **extra), second, resume=tmp_path / "part" / "last")
    assert [r["epoch"] for r in second.rows] == [2, 3]
    resumed = [r["train_loss"] for r in first.rows + second.rows]
    straight = [r["train_loss"] for r in full.rows]
    np.testing.assert_allclose(resumed, straight, rtol=1e-5)
    assert len({round(x, 6) for x in straight}) == 4  # the losses do change


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    run = tmp_path / "run"

    def poison(epoch, step, batch):
        if epoch == 1 and step == 1:
            batch.num[0, 0, 0] = float("nan")
        return batch

    with pytest.raises(NonFiniteLossError, match="non-finite loss at epoch 1, step 1"):
        train(cfg_for("generative", tiny, **{"train.epochs": 3}), LocalReporter(run, stream=None), on_batch=poison)
    metrics = json.loads((run / "last" / "metrics.json").read_text())
    assert metrics["epoch"] == 0
    state = torch.load(run / "last" / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["encoder"].values())


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="optim.lrr"):
        make_config("coles", parse_overrides(["optim.lrr=1"]))
    with pytest.raises(ConfigError, match="model.hidden"):
        make_config("coles", parse_overrides(["model.hidden=big"]))
    with pytest.raises(ConfigError, match="slice_min"):
        make_config("coles", {"data.slice_min": 50, "data.slice_max": 10})
    assert make_config("mlem").optim.lr == 3e-3 and make_config("coles").optim.lr == 1e-3
    assert make_config("mlem", base={"optim": {"lr": 0.01}}).optim.lr == 0.01


# ---------- the CLI ----------


def test_pretrain_evaluate_embed_cli(tiny, tmp_path, capsys):
    run = tmp_path / "coles"
    sets = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]
    assert main(["pretrain", "--data", str(tiny), "--method", "coles", "--out", str(run), *sets]) == 0
    assert (run / "best" / "model.pt").exists() and (run / "last" / "config.yaml").exists()
    # per-epoch TensorBoard scalars beside metrics.jsonl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(run)).Reload()
    assert [e.step for e in scalars.Scalars("val_loss")] == [0, 1]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # a second run into the same directory is refused, --resume with nothing left to do is fine
    assert main(["pretrain", "--data", str(tiny), "--method", "coles", "--out", str(run), *sets]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tiny), "--method", "mlem", "--out", str(tmp_path / "m"), *sets]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tiny), "--method", "mlem", "--teacher", str(run / "best"),
                 "--out", str(tmp_path / "m"), *sets]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--data", str(tiny), "--checkpoint", str(tmp_path / "m" / "best"), "--json", "--folds", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "mlem" and result["tree_test_mse"] > 0 and 0 < result["anisotropy"] <= 1
    out = tmp_path / "emb.parquet"
    assert main(["embed", "--data", str(tiny), "--checkpoint", str(run / "best"), "--out", str(out)]) == 0
    table = pq.read_table(out)
    seqs = EventSequences.open(tiny)
    assert table.num_rows == len(seqs) and table.column_names == ["id", "split", "target", "embedding"]
    width = SMALL["model.hidden"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), width)  # fixed_size_list<float32>[H]
    vectors = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, width)
    assert np.isfinite(vectors).all() and vectors.std(0).min() > 0
    labelled = ~np.isnan(seqs.targets)
    assert table.column("target").null_count == int((~labelled).sum())
    wide = tmp_path / "wide.parquet"
    assert main(["embed", "--data", str(tiny), "--checkpoint", str(run / "best"), "--out", str(wide), "--wide"]) == 0
    wide_table = pq.read_table(wide)
    assert wide_table.column_names[-1] == f"e{width - 1}" and "embedding" not in wide_table.column_names
    assert np.allclose(np.stack([wide_table.column(f"e{j}").to_numpy() for j in range(width)], 1), vectors)


def test_checkpoint_from_another_schema_is_refused(tiny, tmp_path, capsys):
    other = tmp_path / "other"
    events = tmp_path / "ev.csv"
    events.write_text("id,t,c\n1,0,a\n1,1,b\n2,0,a\n2,1,a\n3,0,b\n3,2,a\n")
    assert main(["data", "ingest", "--events", str(events), "--out", str(other), "--id-col", "id", "--time-col", "t",
                 "--cat-cols", "c"]) == 0
    run = tmp_path / "run"
    train(cfg_for("coles", tiny), LocalReporter(run, stream=None))
    capsys.readouterr()
    code = main(["embed", "--data", str(other), "--checkpoint", str(run / "best"), "--out", str(tmp_path / "e.parquet")])
    err = capsys.readouterr().err
    assert code == 2 and "another data schema" in err and len(err.strip().splitlines()) == 1
    code = main(["pretrain", "--data", str(other), "--method", "mlem", "--teacher", str(run / "best"), "--out",
                 str(tmp_path / "m")])
    assert code == 2 and "another data schema" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
