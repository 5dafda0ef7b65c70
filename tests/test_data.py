"""Tests for dnnlab.data: offline loaders, splits, scaling, file readers, downloads (no network)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import shutil
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dnnlab import data
from dnnlab.data import DataError, Splits, download, load_data
from helpers.fake_data import idx_bytes, write_fake_cifar, write_fake_mnist

CONF = Path(__file__).resolve().parents[1] / "dnnlab" / "conf" / "data"
ALL_DATA = ("digits", "mnist1d", "synthetic", "mnist", "fashion_mnist", "cifar10")


def option(name: str):
    """The shipped option as its defaults list composes it: data/_common.yaml, then the option's own keys."""
    own = OmegaConf.load(CONF / f"{name}.yaml")
    assert list(own.pop("defaults")) == ["_common", "_self_"]
    return OmegaConf.merge(OmegaConf.load(CONF / "_common.yaml"), own)


def make_cfg(name: str = "digits", **overrides):
    """The shipped yaml with overrides, interpolations (oc.env) resolved."""
    cfg = OmegaConf.merge(option(name), overrides)
    OmegaConf.resolve(cfg)
    return cfg


def all_labels(s: Splits) -> torch.Tensor:
    return torch.cat([s.train_y, s.val_y, s.test_y])


# --- config files --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_DATA)
def test_yaml_has_description_and_common_keys(name):
    text = (CONF / f"{name}.yaml").read_text(encoding="utf-8")
    assert text.startswith("# ") and len(text.splitlines()[0]) > 10
    cfg = option(name)
    for key in data.common_defaults():  # the common keys as the loader reads them, from data/_common.yaml
        assert key in cfg, f"{name}.yaml lacks {key}"
    assert cfg._target_ == f"dnnlab.data.load_{name}"
    assert cfg.val_fraction == 0.1 and cfg.split_seed == 0 and cfg.scaling == "standardize"


def test_root_comes_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DNNLAB_DATA", str(tmp_path))
    assert make_cfg("mnist").root == str(tmp_path)
    monkeypatch.delenv("DNNLAB_DATA")
    assert make_cfg("mnist").root == "~/.cache/dnnlab"


# --- offline loaders -----------------------------------------------------------------------

@pytest.mark.parametrize("name, shape, n_classes, sizes", [
    ("digits", (1, 8, 8), 10, (1294, 144, 359)),
    ("mnist1d", (40,), 10, (3600, 400, 1000)),
    ("synthetic", (20,), 3, (1440, 160, 400)),
])
def test_offline_loader_shapes_and_sizes(name, shape, n_classes, sizes):
    s = load_data(make_cfg(name))
    assert s.name == name and s.n_classes == n_classes and s.input_shape == shape
    for x, y, n in ((s.train_x, s.train_y, sizes[0]), (s.val_x, s.val_y, sizes[1]),
                    (s.test_x, s.test_y, sizes[2])):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape) == (n, *shape) and tuple(y.shape) == (n,)
    assert set(all_labels(s).tolist()) == set(range(n_classes))
    assert torch.isfinite(s.train_x).all()


@pytest.mark.parametrize("name", ["digits", "mnist1d", "synthetic"])
def test_deterministic_and_independent_of_global_seeds(name):
    torch.manual_seed(1)
    np.random.seed(1)
    a = load_data(make_cfg(name))
    torch.manual_seed(2)
    np.random.seed(2)
    b = load_data(make_cfg(name))
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_split_seed_changes_the_split():
    a = load_data(make_cfg(split_seed=0))
    b = load_data(make_cfg(split_seed=1))
    assert len(a.val_y) == len(b.val_y) and not torch.equal(a.val_x, b.val_x)


def test_splits_are_disjoint_and_cover_digits():
    s = load_data(make_cfg(scaling="none", val_fraction=0.1))
    rows = [tuple(r) for x in (s.train_x, s.val_x, s.test_x) for r in x.flatten(1).tolist()]
    from sklearn.datasets import load_digits
    raw = load_digits()
    assert len(rows) == len(raw.target)
    # Duplicated images exist in digits, so compare multisets rather than sets.
    assert sorted(rows) == sorted(tuple(r) for r in raw.data.astype(np.float32).tolist())


def test_stratified_val_split():
    s = load_data(make_cfg())
    train_frac = torch.bincount(s.train_y) / len(s.train_y)
    val_frac = torch.bincount(s.val_y, minlength=10) / len(s.val_y)
    assert (train_frac - val_frac).abs().max() < 0.02


def test_digits_is_fast():
    load_data(make_cfg())  # warm imports
    start = time.perf_counter()
    load_data(make_cfg())
    assert time.perf_counter() - start < 0.5


def test_mnist1d_is_learnable_by_a_small_mlp():
    s = load_data(make_cfg("mnist1d"))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(40, 100), torch.nn.ReLU(),
                              torch.nn.Linear(100, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(100):  # full-batch: enough to get far above chance, fast on CPU
        loss = torch.nn.functional.cross_entropy(net(s.train_x), s.train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (net(s.test_x).argmax(1) == s.test_y).float().mean().item()
    assert acc > 0.4  # chance is 0.1; the paper's MLP reaches ~0.68 with longer training



@pytest.mark.parametrize("args", [{}, {"num_samples": 600, "seed": 3, "final_seq_length": 30, "max_translation": 20}])
def test_mnist1d_equals_the_reference_generator(args):
    """The paper's arrays: `mnist1d` on PyPI (a test-only dependency), `make_dataset` with the same args."""
    reference = pytest.importorskip("mnist1d.data")
    ref_args = reference.get_dataset_args(as_dict=True)
    ref_args.update(args)
    ref = reference.make_dataset(reference.ObjectView(ref_args))
    ours = data.load_mnist1d(n_samples=ref_args["num_samples"], seed=ref_args["seed"],
                             final_seq_length=ref_args["final_seq_length"],
                             max_translation=ref_args["max_translation"])
    for got, want in zip(ours, (ref["x"], ref["y"], ref["x_test"], ref["y_test"])):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# --- scaling -------------------------------------------------------------------------------

def test_standardize_uses_training_statistics_only():
    s = load_data(make_cfg("digits"))  # images: one channel, a single mean/std
    assert abs(s.train_x.mean().item()) < 1e-4 and abs(s.train_x.std().item() - 1) < 1e-3
    raw = load_data(make_cfg("digits", scaling="none"))
    mean, std = raw.train_x.mean(), raw.train_x.std(unbiased=False)
    for scaled, unscaled in ((s.val_x, raw.val_x), (s.test_x, raw.test_x)):
        assert torch.allclose(scaled, (unscaled - mean) / std, atol=1e-5)
    v = load_data(make_cfg("mnist1d"))  # vectors: per feature
    assert v.train_x.mean(0).abs().max() < 1e-4
    assert (v.train_x.std(0) - 1).abs().max() < 1e-3
    assert v.test_x.mean(0).abs().max() > 1e-3


def test_unit_and_symmetric_scaling():
    u = load_data(make_cfg(scaling="unit"))
    assert u.train_x.min() == 0 and u.train_x.max() == 1
    raw = load_data(make_cfg(scaling="none"))
    assert torch.allclose(u.train_x * 16, raw.train_x, atol=1e-5)  # digits pixels are 0..16
    sym = load_data(make_cfg(scaling="symmetric"))
    assert sym.train_x.min() == -1 and sym.train_x.max() == 1


def test_bad_scaling_is_a_clear_value_error():
    with pytest.raises(ValueError) as err:
        load_data(make_cfg(scaling="zscore"))
    msg = str(err.value)
    assert "data.scaling" in msg and "zscore" in msg
    for valid in ("standardize", "unit", "symmetric", "none"):
        assert valid in msg


@pytest.mark.parametrize("key, value", [("val_fraction", 1.5), ("train_fraction", 0),
                                        ("limit", -3), ("classes", [1, 1]), ("classes", [42])])
def test_bad_common_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"data.{key}"):
        load_data(make_cfg(**{key: value}))


def test_unknown_loader_key_is_named():
    with pytest.raises(ValueError, match="data.n_sampels"):
        load_data(make_cfg("synthetic", n_sampels=10))


# --- classes, train_fraction, limit --------------------------------------------------------

def test_classes_filter_and_relabel_in_given_order():
    s = load_data(make_cfg(classes=[5, 6, 7, 8, 9]))
    assert s.n_classes == 5 and set(all_labels(s).tolist()) == {0, 1, 2, 3, 4}
    from sklearn.datasets import load_digits
    target = load_digits().target
    assert len(all_labels(s)) == int(np.isin(target, [5, 6, 7, 8, 9]).sum())
    r = load_data(make_cfg(classes=[9, 5]))
    counts = torch.bincount(all_labels(r)).tolist()
    assert counts == [int((target == 9).sum()), int((target == 5).sum())]


def test_train_fraction_shrinks_only_train():
    full = load_data(make_cfg())
    few = load_data(make_cfg(train_fraction=0.1))
    assert len(few.train_y) == round(0.1 * len(full.train_y))
    assert torch.equal(few.test_y, full.test_y) and len(few.val_y) == len(full.val_y)
    assert set(few.train_y.tolist()) == set(range(10))  # stratified: every class kept


def test_limit_caps_every_split():
    s = load_data(make_cfg("mnist1d", limit=50))
    assert len(s.train_y) == len(s.test_y) == 50 and len(s.val_y) <= 50


def test_plain_mapping_config_and_to_device():
    s = load_data({"_target_": "dnnlab.data.load_synthetic", "n_samples": 300, "limit": 20})
    assert s.name == "synthetic" and len(s.train_y) == 20
    moved = s.to("meta")
    assert moved.train_x.device.type == "meta" and moved.test_y.device.type == "meta"
    assert s.train_x.device.type == "cpu" and moved.n_classes == s.n_classes


# --- IDX (MNIST / Fashion-MNIST) -----------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_reader_on_fake_files(tmp_path, name):
    arrays = write_fake_mnist(tmp_path / name)
    s = load_data(make_cfg(name, root=str(tmp_path), download=False, scaling="none",
                           val_fraction=0.0))
    assert s.input_shape == (1, 28, 28) and s.n_classes == 10
    assert torch.equal(s.train_x[:, 0], torch.tensor(arrays["train-images-idx3-ubyte.gz"],
                                                     dtype=torch.float32))
    assert s.train_y.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    assert s.test_y.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()
    std = load_data(make_cfg(name, root=str(tmp_path), download=False))
    assert len(std.train_y) == 18 and len(std.val_y) == 2
    assert abs(std.train_x.mean().item()) < 1e-4  # one channel: a single mean/std


def test_unzipped_idx_files_are_accepted(tmp_path):
    arrays = write_fake_mnist(tmp_path / "mnist")
    for gz in (tmp_path / "mnist").glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    s = load_data(make_cfg("mnist", root=str(tmp_path), download=False, val_fraction=0.0))
    assert s.train_y.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()


@pytest.mark.parametrize("payload", [
    b"this is not gzip at all",
    gzip.compress(b"\x08\x03\x00\x00" + b"\x00" * 100),           # wrong magic
    gzip.compress(idx_bytes(np.zeros((20, 28, 28)))[:-5]),        # truncated data
])
def test_corrupt_idx_names_the_file(tmp_path, payload):
    write_fake_mnist(tmp_path / "mnist")
    bad = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(payload)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_data(make_cfg("mnist", root=str(tmp_path), download=False))


def test_label_count_mismatch_is_data_error(tmp_path):
    write_fake_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(7))))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_data(make_cfg("mnist", root=str(tmp_path), download=False))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_files_without_download(tmp_path, name):
    with pytest.raises(DataError) as err:
        load_data(make_cfg(name, root=str(tmp_path), download=False))
    msg = str(err.value)
    assert str(tmp_path / name) in msg and "download" in msg and "data.root" in msg
    assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir())


def test_missing_files_message_uses_env_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DNNLAB_DATA", str(tmp_path / "store"))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_data(make_cfg("mnist", download=False))


# --- downloads (URL fetch monkeypatched to serve local files) ------------------------------

@pytest.fixture
def served(tmp_path, monkeypatch):
    """Fake MNIST files in a 'server' folder; _fetch_url copies from it by file name."""
    server = tmp_path / "server"
    write_fake_mnist(server)
    fetched: list[str] = []

    def fake_fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        shutil.copyfile(server / url.rsplit("/", 1)[-1], dest)

    monkeypatch.setattr(download, "_fetch_url", fake_fetch)
    return server, fetched


def test_download_with_good_checksum_lands_files(tmp_path, monkeypatch, served):
    server, fetched = served
    for f in data.MNIST_MD5:
        monkeypatch.setitem(data.MNIST_MD5, f, hashlib.md5((server / f).read_bytes()).hexdigest())
    root = tmp_path / "root"
    s = load_data(make_cfg("mnist", root=str(root), download=True))
    assert len(s.train_y) + len(s.val_y) == 20
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(data.MNIST_MD5)
    assert all(u.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for u in fetched)
    fetched.clear()
    load_data(make_cfg("mnist", root=str(root), download=True))
    assert fetched == []  # downloaded once


def test_download_with_bad_checksum_leaves_nothing(tmp_path, served):
    root = tmp_path / "root"  # the real MD5s never match the fake files
    with pytest.raises(DataError, match="[Cc]hecksum"):
        load_data(make_cfg("mnist", root=str(root), download=True))
    assert list((root / "mnist").iterdir()) == []


def test_download_failure_is_data_error_and_leaves_nothing(tmp_path, monkeypatch):
    def broken(url: str, dest: Path) -> None:
        dest.write_bytes(b"partial")
        raise OSError("connection reset")

    monkeypatch.setattr(download, "_fetch_url", broken)
    with pytest.raises(DataError, match="connection reset"):
        load_data(make_cfg("fashion_mnist", root=str(tmp_path), download=True))
    assert list((tmp_path / "fashion_mnist").iterdir()) == []


# --- CIFAR-10 ------------------------------------------------------------------------------

def check_cifar(s: Splits, written: list[dict]) -> None:
    assert s.input_shape == (3, 32, 32) and len(s.train_y) == 20 and len(s.test_y) == 4
    first = torch.tensor(written[0][b"data"][0, :1024].reshape(32, 32), dtype=torch.float32)
    assert torch.equal(s.train_x[0, 0], first)  # channel-major rows: red plane first
    assert s.test_y.tolist() == written[5][b"labels"]


def test_cifar_reader_on_fake_folder(tmp_path):
    written = write_fake_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    cfg = make_cfg("cifar10", root=str(tmp_path), download=False, scaling="none", val_fraction=0.0)
    check_cifar(load_data(cfg), written)
    std = load_data(make_cfg("cifar10", root=str(tmp_path), download=False))
    assert std.train_x.mean(dim=(0, 2, 3)).abs().max() < 1e-4  # per channel
    assert (std.train_x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_cifar_from_tarball_is_extracted(tmp_path):
    staging = tmp_path / "staging"
    written = write_fake_cifar(staging / "cifar-10-batches-py")
    (tmp_path / "cifar10").mkdir()
    with tarfile.open(tmp_path / "cifar10" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    cfg = make_cfg("cifar10", root=str(tmp_path), download=False, scaling="none", val_fraction=0.0)
    check_cifar(load_data(cfg), written)
    assert (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    assert not [p for p in (tmp_path / "cifar10").iterdir() if p.name.startswith(".")]


def test_corrupt_cifar_batch_names_the_file(tmp_path):
    batches = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_fake_cifar(batches)
    (batches / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_data(make_cfg("cifar10", root=str(tmp_path), download=False))


def test_cifar_batch_that_would_run_code_is_refused(tmp_path):
    batches = tmp_path / "cifar10" / data.CIFAR10_DIR
    write_fake_cifar(batches)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (batches / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="test_batch"):
        load_data(make_cfg("cifar10", root=str(tmp_path), download=False))
