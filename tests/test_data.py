import os
import pickle

import numpy as np
import pytest
from conftest import make_image_tree, tar_tree

from pipeline.data.splits import DataConfig, make_splits, stratified_indices
from pipeline.data.formats import load_raw, resolve_source
from pipeline.errors import DataError


def test_offline_with_nothing_local_says_which_files_to_put_where(monkeypatch):
    import tf_keras as keras

    import pipeline.data.formats as data

    def offline():  # what Keras raises when it cannot reach the download host
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/...: None -- [Errno -3] name resolution")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataError, match="could not download cifar10") as exc:
        load_raw("cifar10", None)  # KERAS_HOME is an empty folder (conftest)
    assert "cifar-10-python.tar.gz" in str(exc.value)
    assert str(data.keras_cache_dir()) in str(exc.value) and "--data-dir" in str(exc.value)


def test_empty_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no cifar10 data found in"):
        resolve_source("cifar10", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        resolve_source("cifar10", tmp_path / "nope")


def test_folder_needs_a_data_dir():
    with pytest.raises(DataError, match="needs --data-dir"):
        resolve_source("folder", None)


def test_env_var_is_used(tmp_path, monkeypatch):
    make_image_tree(tmp_path / "tree")
    monkeypatch.setenv("NIN_DATA_DIR", str(tmp_path / "tree"))
    assert resolve_source("folder", None) == tmp_path / "tree"


def _write_cifar_batches(d, n=20):
    rng = np.random.default_rng(0)
    d.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": list(np.arange(n) % 10)}
        (d / name).write_bytes(pickle.dumps(batch))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))


def test_official_cifar_layout_in_a_data_dir(tmp_path):
    _write_cifar_batches(tmp_path / "cifar-10-batches-py")
    raw = load_raw("cifar10", tmp_path)
    assert raw.x_train.shape == (40, 32, 32, 3) and raw.x_test.shape == (20, 32, 32, 3)
    assert raw.labels[3] == "c3"


class _RunsACommand:
    """A pickle that, loaded with plain pickle.loads, runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_cifar_pickle_is_refused_without_running_it(tmp_path, caplog):
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar_batches(d)
    marker = tmp_path / "pwned"
    (d / "data_batch_1").write_bytes(pickle.dumps({b"data": _RunsACommand(marker)}))
    with pytest.raises(DataError, match="data_batch_1 is not a CIFAR pickle .*asks to run (posix|os).system"):
        load_raw("cifar10", tmp_path)
    assert not marker.exists(), "the pickle's command ran"
    # a file with the official archive's name but other bytes: loaded if it can be, with a warning
    fake = tmp_path / "other" / "cifar-10-python.tar.gz"
    fake.parent.mkdir()
    import tarfile

    with tarfile.open(fake, "w:gz") as tf:
        tf.add(d, arcname="cifar-10-batches-py")
    (d / "data_batch_1").unlink()
    with pytest.raises(DataError):
        load_raw("cifar10", fake)
    assert "differs from the published archive" in caplog.text


def test_keras_cache_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    _write_cifar_batches(tmp_path / "datasets" / "cifar-10-batches-py")
    assert load_raw("cifar10", None).x_train.shape[0] == 40


def test_mnist_npz_is_grayscale_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mnist.npz", x_train=rng.integers(0, 255, (30, 28, 28), dtype=np.uint8),
             y_train=np.arange(30) % 10, x_test=rng.integers(0, 255, (10, 28, 28), dtype=np.uint8),
             y_test=np.arange(10))
    splits = make_splits(DataConfig(dataset="mnist", data_dir=str(tmp_path), val_fraction=0.2))
    assert splits.input_shape == (28, 28, 1)
    assert splits.hflip is False  # a flipped digit is another digit


def test_image_tree_counts_corrupt_files_and_reads_tarballs(tmp_path):
    tree = make_image_tree(tmp_path / "tree", corrupt=2)
    raw = load_raw("folder", tree)
    assert raw.skipped == 2
    assert raw.labels == ("cat", "dog", "fox")
    assert raw.x_train.shape == (18, 16, 16, 3) and raw.x_test.shape == (9, 16, 16, 3)
    tgz = tar_tree(tree, tmp_path / "tree.tar.gz")
    raw2 = load_raw("folder", tgz)
    np.testing.assert_array_equal(raw2.y_train, raw.y_train)
    np.testing.assert_array_equal(raw2.x_test, raw.x_test)


def test_image_tree_resizes_to_input_size(tmp_path):
    tree = make_image_tree(tmp_path / "tree", size=20)
    assert load_raw("folder", tree, input_size=8).x_train.shape[1:] == (8, 8, 3)


def test_class_mismatch_and_empty_class_are_errors(tmp_path):
    tree = make_image_tree(tmp_path / "t1")
    (tree / "test" / "fox").rename(tree / "test" / "wolf")
    with pytest.raises(DataError, match="only in train: \\['fox'\\]; only in test: \\['wolf'\\]"):
        load_raw("folder", tree)
    tree2 = make_image_tree(tmp_path / "t2")
    for f in (tree2 / "train" / "dog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="no readable images for class\\(es\\) dog"):
        load_raw("folder", tree2)


def test_one_class_and_a_line_break_in_a_class_name_are_refused(tmp_path):
    """One class would train a model that scores 100% by always answering it; a class name with a
    line break would break labels.txt (one class per line)."""
    with pytest.raises(DataError, match="only one class \\(cat\\): a classifier needs at least 2"):
        load_raw("folder", make_image_tree(tmp_path / "one", classes=("cat",)))
    with pytest.raises(DataError, match="line breaks or control characters"):
        load_raw("folder", make_image_tree(tmp_path / "nl", classes=("cat", "dog\nfox")))


def test_archive_links_and_paths_outside_the_tree_are_left_out_and_said(tmp_path, caplog):
    import io
    import tarfile

    tree = make_image_tree(tmp_path / "tree")
    tar = tmp_path / "t.tar.gz"
    png = (tree / "train" / "cat" / "000.png").read_bytes()
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(tree / "train", arcname="train")
        tf.add(tree / "test", arcname="test")
        for name, target in (("train/cat/abs.png", "/etc/passwd"), ("train/wolf/up.png", "../../x.png"),
                             ("../evil/a.png", None), ("/abs/train/cat/b.png", None)):
            ti = tarfile.TarInfo(name)
            if target:
                ti.type, ti.linkname = tarfile.SYMTYPE, target
                tf.addfile(ti)
            else:
                ti.size = len(png)
                tf.addfile(ti, io.BytesIO(png))
    raw = load_raw("folder", tar)
    assert raw.labels == ("cat", "dog", "fox") and len(raw.y_train) == 18  # no 'wolf', no extra image
    assert "left out 4 member(s) that are links or paths outside the tree" in caplog.text


def test_truncated_archive_is_a_clear_error(tmp_path):
    tgz = tar_tree(make_image_tree(tmp_path / "tree"), tmp_path / "t.tar.gz")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(tgz.read_bytes()[: len(tgz.read_bytes()) // 2])
    with pytest.raises(DataError, match="corrupt or truncated|not a readable archive"):
        load_raw("folder", bad)


def test_stratified_indices_keep_class_balance():
    y = np.repeat(np.arange(10), [100] * 5 + [50] * 5)
    idx = stratified_indices(y, 150, np.random.default_rng(0))
    assert len(idx) == len(set(idx)) == 150
    counts = np.bincount(y[idx], minlength=10)
    assert list(counts) == [20] * 5 + [10] * 5  # 150 of 750: a fifth of every class


def test_validation_is_held_out_of_train(tmp_path):
    tree = make_image_tree(tmp_path / "tree", per_class=(10, 2))
    s = make_splits(DataConfig(dataset="folder", data_dir=str(tree), val_fraction=0.2, seed=1))
    assert len(s.y_val) == 6 and len(s.y_train) == 24 and len(s.y_test) == 6
    assert sorted(np.bincount(s.y_val)) == [2, 2, 2]
    train_rows = {r.tobytes() for r in s.x_train}
    assert not any(r.tobytes() in train_rows for r in s.x_val)


def test_cifar100_official_layout(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name, n in (("train", 30), ("test", 10)):
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"fine_labels": list(np.arange(n) % 100)}
        (d / name).write_bytes(pickle.dumps(batch))
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"k{i}".encode() for i in range(100)]}))
    raw = load_raw("cifar100", tmp_path)
    assert raw.x_train.shape == (30, 32, 32, 3) and len(raw.labels) == 100 and raw.labels[7] == "k7"
    # the official archive itself: its member cifar-100-python/train is a file, not an image tree's split
    import tarfile

    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tf:
        tf.add(d, arcname="cifar-100-python")
    raw = load_raw("cifar100", tmp_path / "cifar-100-python.tar.gz")
    assert raw.x_train.shape == (30, 32, 32, 3) and len(raw.labels) == 100


def test_fashion_mnist_idx_files(tmp_path):
    import gzip

    rng = np.random.default_rng(0)
    d = tmp_path / "fashion-mnist"
    d.mkdir()

    def idx(arr, path):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
        path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))

    xtr, xte = rng.integers(0, 255, (12, 28, 28)), rng.integers(0, 255, (4, 28, 28))
    idx(xtr, d / "train-images-idx3-ubyte.gz")
    idx(np.arange(12) % 10, d / "train-labels-idx1-ubyte.gz")
    idx(xte, d / "t10k-images-idx3-ubyte.gz")
    idx(np.arange(4), d / "t10k-labels-idx1-ubyte.gz")
    raw = load_raw("fashion_mnist", tmp_path)
    assert raw.x_train.shape == (12, 28, 28, 1) and list(raw.y_test) == [0, 1, 2, 3]
    np.testing.assert_array_equal(raw.x_test[..., 0], xte)
    assert raw.labels[9] == "ankle-boot"


# --------------------------------------------------------------------------- how decoded images are held

def _splits(tree, cache, **kw):
    return make_splits(DataConfig(dataset="folder", data_dir=str(tree), val_fraction=0.2, seed=3, cache=cache, **kw),
                       progress=False)


def test_every_data_cache_mode_gives_the_same_splits_and_pixels(tmp_path):
    tree = make_image_tree(tmp_path / "tree", per_class=(10, 4), corrupt=1)
    got = {mode: _splits(tree, mode, limit_train=24) for mode in ("memory", "disk", "none")}
    assert {m: s.cache for m, s in got.items()} == {"memory": "memory", "disk": "disk", "none": "none"}
    ref = got["memory"]
    assert ref.skipped == 1 and len(ref.y_train) + len(ref.y_val) <= 24
    for mode, s in got.items():
        assert s.skipped == 1, mode
        for part in ("train", "val", "test"):
            np.testing.assert_array_equal(getattr(s, f"y_{part}"), getattr(ref, f"y_{part}"), err_msg=f"{mode} {part}")
            np.testing.assert_array_equal(np.asarray(getattr(s, f"x_{part}")), np.asarray(getattr(ref, f"x_{part}")),
                                          err_msg=f"{mode} {part}")
    assert type(got["disk"].x_train.store).__name__ == "DiskStore" and type(got["memory"].x_train.store) is np.ndarray


def test_tf_data_pipeline_is_the_same_from_files_and_from_memory(tmp_path):
    from pipeline.data.splits import make_dataset

    tree = make_image_tree(tmp_path / "tree", per_class=(10, 4))
    for training in (False, True):
        batches = {}
        for mode in ("memory", "none"):
            s = _splits(tree, mode)
            ds = make_dataset(s.x_train, s.y_train, 8, training=training, seed=5)
            batches[mode] = [(x.numpy(), y.numpy()) for x, y in ds]
        assert sum(len(y) for _, y in batches["none"]) == 24
        # the same seed: the same order, and (training) the same flips and crops, from either store
        for (xa, ya), (xb, yb) in zip(batches["memory"], batches["none"]):
            np.testing.assert_array_equal(ya, yb)
            np.testing.assert_allclose(xa, xb)
            assert xa.dtype == np.float32 and xa.max() <= 1.0


def test_augmentation_is_seeded_and_differs_every_epoch(tmp_path):
    from pipeline.data.splits import make_dataset

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8), np.repeat(np.arange(3), 16)

    def epochs(seed, n=2):
        ds = make_dataset(x, y, 48, training=True, seed=seed).repeat(n)
        return [(a.numpy(), b.numpy()) for a, b in ds]

    first, again, other = epochs(1), epochs(1), epochs(2)
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)  # bit for bit
    (x1, y1), (x2, y2) = first
    assert not np.array_equal(y1, y2) or not np.array_equal(x1, x2)  # epoch 2 is shuffled and augmented anew
    assert not np.array_equal(x1, other[0][0])  # another seed, another epoch


def test_each_augmented_image_is_a_flip_and_translation_of_its_own_image():
    """The batch-wise augmentation: image i of a batch is a crop of image i's own reflect-padded copy,
    flipped or not, at its own offset — flips and offsets vary across the batch."""
    from pipeline.data.splits import make_dataset

    rng = np.random.default_rng(0)
    n, side, pad = 64, 16, 2  # 16 px: translations of up to 16 // 8 = 2 px
    x = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    (xb, yb), = [(a.numpy(), b.numpy()) for a, b in make_dataset(x, np.arange(n), n, training=True, seed=3)]
    assert sorted(yb) == list(range(n))  # the labels name the source image
    seen = set()
    for img, i in zip(np.rint(xb * 255).astype(np.uint8), yb):
        padded = np.pad(x[i], [(pad, pad), (pad, pad), (0, 0)], mode="reflect")
        found = [(f, oy, ox) for f in (0, 1) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
                 if np.array_equal((padded[:, ::-1] if f else padded)[oy:oy + side, ox:ox + side], img)]
        assert found, f"image {i} is no flip/translation of its source"
        seen.add(found[0])
    assert {f for f, _, _ in seen} == {0, 1} and len({(oy, ox) for _, oy, ox in seen}) > 10


def test_auto_holds_images_in_memory_within_the_budget_else_on_disk(tmp_path, caplog):
    tree = make_image_tree(tmp_path / "tree")
    assert _splits(tree, "auto").cache == "memory"
    with caplog.at_level("INFO", logger="pipeline"):
        assert _splits(tree, "auto", memory_budget_gb=1e-6).cache == "disk"
    assert "--data-cache auto -> disk" in caplog.text
    tgz = tar_tree(tree, tmp_path / "tree.tar.gz")
    with caplog.at_level("WARNING", logger="pipeline"):
        assert _splits(tgz, "none").cache == "disk"  # an archive cannot be read out of order
    assert "is an archive" in caplog.text


def test_decoded_cache_is_reused_and_follows_the_tree(tmp_path, monkeypatch):
    from pipeline.data.formats import nin_cache_dir

    monkeypatch.setenv("NIN_CACHE_DIR", str(tmp_path / "cache"))
    tree = make_image_tree(tmp_path / "tree")
    _splits(tree, "disk")
    (cache,) = nin_cache_dir().glob("tree-*.u8")
    stamp = cache.stat().st_mtime_ns
    _splits(tree, "disk")
    assert cache.stat().st_mtime_ns == stamp  # read back, not decoded again
    # a changed tree (an image added) is a new listing: the old cache is not used for it
    extra = tree / "train" / "cat" / "999.png"
    extra.write_bytes((tree / "train" / "cat" / "000.png").read_bytes())
    s = make_splits(DataConfig(dataset="folder", data_dir=str(tree), val_fraction=0.0, cache="disk"), progress=False)
    assert len(s.y_train) == 19 and len(list(nin_cache_dir().glob("tree-*.u8"))) == 2


def test_streaming_trains_on_a_tree_with_a_corrupt_file(tmp_path):
    """--data-cache none: the model trains on images decoded as they are read; the corrupt file is
    counted and never reaches training."""
    import tf_keras as keras

    from pipeline.data.splits import make_dataset
    from pipeline.models.nin import ModelConfig, build_model
    from pipeline.train.fit import TrainConfig, fit

    tree = make_image_tree(tmp_path / "tree", per_class=(12, 3), corrupt=2)
    s = _splits(tree, "none")
    assert s.cache == "none" and s.skipped == 2 and len(s.y_train) + len(s.y_val) == 36
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(width=0.125, num_classes=3, input_shape=(16, 16, 3)))
    ds = make_dataset(s.x_train, s.y_train, 8, training=True, seed=0).repeat()
    hist = fit(model, ds, None, TrainConfig(epochs=2, batch_size=8, lr=0.05, warmup_epochs=0), steps_per_epoch=4,
               run_dir=tmp_path / "run", tag="t", verbose=0)
    assert len(hist["loss"]) == 2 and all(np.isfinite(hist["loss"]))


def test_a_tree_that_mixes_grayscale_and_colour_is_rgb(tmp_path):
    from PIL import Image

    tree = make_image_tree(tmp_path / "tree")
    for f in (tree / "train" / "cat").iterdir():  # the first class, and so the first image, grayscale
        Image.open(f).convert("L").save(f)
    s = _splits(tree, "memory")
    assert s.input_shape == (16, 16, 3)
    gray = make_image_tree(tmp_path / "gray")
    for f in gray.rglob("*.png"):
        Image.open(f).convert("L").save(f)
    assert _splits(gray, "disk").input_shape == (16, 16, 1)


def test_subsets_are_drawn_over_readable_images(tmp_path):
    tree = make_image_tree(tmp_path / "tree", per_class=(10, 4), corrupt=3)
    for mode in ("memory", "none"):
        s = _splits(tree, mode, limit_train=20)
        assert len(s.y_train) + len(s.y_val) == 20 and s.skipped == 3, mode
