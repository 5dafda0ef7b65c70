"""Which sweep jobs share a stack (dnnlab.runs.stacks): stackable values, separating ones, solo reasons."""
import pytest

from dnnlab.api import compose
from dnnlab.errors import ConfigError
from dnnlab.runs.stacks import describe, partition, solo_reason
from helpers.configs import tiny

TINY = tiny("data.limit=200", "model.depth=1", "model.width=8")


@pytest.fixture(scope="module")
def base():
    return compose(TINY)


@pytest.mark.parametrize("before, after", [
    ([], ["seed=1"]),
    ([], ["optimizer.lr=0.1"]),
    ([], ["optimizer.weight_decay=0.01"]),
    ([], ["optimizer.betas=[0.8,0.99]"]),
    ([], ["+optimizer.eps=1e-6"]),
    (["optimizer=momentum"], ["optimizer=momentum", "optimizer.momentum=0.5"]),
    (["optimizer=rmsprop"], ["optimizer=rmsprop", "optimizer.alpha=0.99"]),
    ([], ["optimizer.clip_norm=1.0"]),  # null included
    ([], ["optimizer.clip_value=0.5"]),
    ([], ["initializer=glorot_uniform"]),  # the whole node
    ([], ["schedule=1cycle"]),  # the whole node
    (["schedule=power"], ["schedule=power", "schedule.s=10"]),
    (["regularization=[l2]"], ["regularization=[l2]", "regularization.l2.weight=0.1"]),
    (["regularization=[l1]"], ["regularization=[l1]", "regularization.l1.weight=0.1"]),
    (["regularization=[dropout]"], ["regularization=[dropout]", "regularization.dropout.rate=0.5"]),
    (["regularization=[max_norm]"], ["regularization=[max_norm]", "regularization.max_norm.r=1.0"]),
    (["regularization=[early_stopping]"], ["regularization=[early_stopping]", "regularization.early_stopping.patience=2"]),
    ([], ["regularization=[early_stopping]"]),  # a per-member hook, present or not
    ([], ["trainer.progress=true"]),
    ([], ["+tag=lr_sweep"]),  # a label: nothing reads it
    (["study=initializers", "+study.arm=he"], ["study=initializers", "+study.arm=glorot", "initializer=glorot_normal"]),
])
def test_jobs_that_differ_only_in_stackable_values_share_a_stack(base, before, after):
    first = compose([*TINY, *before]) if before else base
    assert partition([first, compose([*TINY, *after])]) == [[0, 1]]


@pytest.mark.parametrize("after", [
    ["activation=elu"], ["normalization=batchnorm"], ["optimizer=adamw"], ["optimizer=nadam"],
    ["trainer.batch_size=16"], ["trainer.epochs=2"], ["data=synthetic"], ["data.limit=100"], ["model.width=16"],
    ["model.depth=2"], ["regularization=[l2]"], ["trainer.diagnostics=false"], ["trainer.device=cpu"],
    ["trainer.eval_batch_size=64"], ["trainer.monitor=val_acc", "trainer.monitor_mode=max"],
])
def test_any_other_difference_separates_stacks(base, after):
    assert partition([base, compose([*TINY, *after])]) == [[0], [1]]


def test_width_lists_stack_when_equal_and_separate_stacks_when_not():
    def job(*overrides: str):
        return compose([*TINY, "model.depth=2", *overrides])

    cfgs = [job("model.width=[16,8]"), job("model.width=[12,6]"), job("model.width=[16,8]", "seed=1"), job("model.width=16")]
    assert partition(cfgs) == [[0, 2], [1], [3]]


def test_an_optimizer_flag_separates_stacks():
    assert partition([compose([*TINY, "optimizer=momentum"]), compose([*TINY, "optimizer=nesterov"])]) == [[0], [1]]


@pytest.mark.parametrize("overrides, reason", [
    (["model=cnn"], 'model._target_="dnnlab.models.cnn" has no stacked form yet (stacks: model=mlp)'),
    (["model.task._target_=dnnlab.pretrain.RealVsCorrupted"], "(stacks: model.task: classification)"),
    (["model.pretrained=outputs/run"], 'model.pretrained="outputs/run" has no stacked form yet'),
    (["model.freeze=1"], "model.freeze=1 has no stacked form yet (stacks: model.freeze=0)"),
    (["trainer.compile=true"], "trainer.compile=true has no stacked form yet"),
    (["trainer.cuda_graph=true"], "trainer.cuda_graph=true has no stacked form yet"),
    (["trainer.channels_last=true"], "trainer.channels_last=true has no stacked form yet"),
    (["trainer.precision=bf16"], 'trainer.precision="bf16" has no stacked form yet (stacks: trainer.precision=fp32)'),
    (["+optimizer.amsgrad=true"], "optimizer.amsgrad=true has no stacked form yet"),
    (["logger=tensorboard"], "(stacks: logger=none)"),
])
def test_a_job_without_a_stacked_form_trains_alone_and_says_why(overrides, reason):
    cfg = compose([*TINY, *overrides])
    assert reason in solo_reason(cfg)
    assert partition([cfg, cfg]) == [[0], [1]]  # equal configs, but no stacked form


def test_a_solo_reason_names_the_option_by_its_group_choice(base):
    assert solo_reason(base) is None
    assert solo_reason(compose([*TINY, "model=cnn"]), {"model": "cnn"}) == \
        "model=cnn has no stacked form yet (stacks: model=mlp)"


def test_stacks_keep_the_jobs_order_and_max_stack_bounds_them():
    a = [compose([*TINY, f"seed={s}"]) for s in range(5)]
    b = compose([*TINY, "activation=tanh"])
    assert partition([a[0], b, a[1], a[2], a[3], a[4]]) == [[0, 2, 3, 4, 5], [1]]
    assert partition(a, max_stack=2) == [[0, 1], [2, 3], [4]]
    assert partition(a, max_stack=1) == [[0], [1], [2], [3], [4]]
    for bad in (0, -1, True, "2", 1.5):
        with pytest.raises(ConfigError, match="hydra.launcher.max_stack=.* is not valid"):
            partition(a, max_stack=bad)


def test_describe_names_what_stacks_and_what_does_not():
    text = describe()
    assert "seed" in text and "optimizer: lr" in text and "regularization: l1.weight" in text
    assert "model=mlp" in text and "logger=none" in text and "trainer.precision=fp32" in text
