import pytest
import torch
from torch import nn

from dnnlab.api import build_model, build_regularizers
from dnnlab.data import load_data
from dnnlab.models import weights
from dnnlab.regularization import L1, L2, EarlyStopping, MaxNorm


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


@pytest.mark.parametrize("reg", [L1(0.1), L2(0.1)])
def test_penalties_leave_biases_alone(reg):
    model = small_model()
    reg.penalty(weights(model)).backward()
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert p.grad is None
        else:
            assert p.grad.abs().sum() > 0


def test_l2_and_l1_values():
    model = small_model()
    ws = weights(model)
    assert L2(0.5).penalty(ws).item() == pytest.approx(0.5 * sum((w**2).sum().item() for w in ws), rel=1e-6)
    assert L1(0.5).penalty(ws).item() == pytest.approx(0.5 * sum(w.abs().sum().item() for w in ws), rel=1e-6)


def test_max_norm_caps_every_row_after_a_step(tiny_cfg, tmp_path):
    cfg = tiny_cfg("regularization=[max_norm]", "regularization.max_norm.r=0.5", "optimizer=sgd", "optimizer.lr=1.0")
    from dnnlab.api import build_trainer
    from dnnlab.runs.rundir import RunDir

    trainer = build_trainer(cfg, RunDir(tmp_path / "capped"))
    x, y = trainer.data.train_x[:32], trainer.data.train_y[:32]
    trainer.train_step(x, y)
    hidden = [blk.linear.weight for name, blk in trainer.model.named_children() if name.startswith("hidden")]
    assert hidden
    for w in hidden:
        assert w.norm(dim=1).max().item() <= 0.5 + 1e-5
    # without the constraint a step with lr=1 leaves rows far above 0.5
    unconstrained = build_trainer(tiny_cfg("optimizer=sgd", "optimizer.lr=1.0"), RunDir(tmp_path / "free"))
    unconstrained.train_step(x, y)
    assert unconstrained.model.hidden1.linear.weight.norm(dim=1).max().item() > 0.5


def test_max_norm_on_conv_filters():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(2, 2))
    with torch.no_grad():
        conv[0].weight.mul_(100)
    MaxNorm(r=1.0).constrain(conv)
    assert conv[0].weight.flatten(1).norm(dim=1).max().item() <= 1.0 + 1e-5


def test_dropout_is_placed_in_every_hidden_block(tiny_cfg):
    cfg = tiny_cfg("regularization=[dropout]", "regularization.dropout.rate=0.3")
    data = load_data(cfg.data)
    model = build_model(cfg, data, build_regularizers(cfg))
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == cfg.model.depth and all(d.p == 0.3 for d in drops)
    alpha = build_model(tiny_cfg("regularization=[alpha_dropout]"), data, build_regularizers(tiny_cfg("regularization=[alpha_dropout]")))
    assert sum(isinstance(m, nn.AlphaDropout) for m in alpha.modules()) == cfg.model.depth


class FakeTrainer:
    def __init__(self):
        self.model = nn.Linear(2, 2)
        self.status = "running"

    def stop(self, status, reason):
        self.status = status


def test_early_stopping_patience_min_delta_and_restore():
    es = EarlyStopping(monitor="val_loss", mode="min", patience=2, min_delta=0.1)
    trainer = FakeTrainer()
    losses = [1.0, 0.5, 0.45, 0.44]  # 0.45 and 0.44 are not better by 0.1
    for epoch, loss in enumerate(losses, 1):
        if epoch == 2:
            best_weight = trainer.model.weight.detach().clone()
        es.on_epoch_end(trainer, {"epoch": epoch, "val_loss": loss})
        with torch.no_grad():
            trainer.model.weight.add_(1.0)
    assert trainer.status == "early_stopped" and es.best_epoch == 2
    es.on_train_end(trainer) if hasattr(trainer, "notes") else None
    trainer.notes = {}
    es.on_train_end(trainer)
    assert torch.equal(trainer.model.weight, best_weight)
    assert trainer.notes["restored_best_epoch"] == 2


def test_early_stopping_stops_a_real_run(tiny_cfg, tmp_path):
    from dnnlab.api import train

    cfg = tiny_cfg("regularization=[early_stopping]", "regularization.early_stopping.patience=1",
                   "regularization.early_stopping.min_delta=10", "trainer.epochs=10")
    summary = train(cfg, run_dir=tmp_path)
    assert summary["status"] == "early_stopped"
    assert summary["epochs"] == 2  # epoch 1 sets the best, epoch 2 fails to beat it by 10
