"""Datasets and DataModules over a tiny features tree written here, exactly to the storage contract.

Patterned domains make alignment checkable by value: in row ``r``
    audio[r, t]      = 4096 * r + t          (int16; / 32768 in items)
    f0_hz[r, i]      = 1000 * r + i + 1      (frame index i)
    cqt[r, :, j]     = 100 * r + j + offset  (column j; offset 0 for cello, 50 for source)
and ``nsynth`` holds N(CQT_MEAN, CQT_STD) log-CQT values with exactly those numbers in its stats.json.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from timbrelab.data.datamodules import CycleGANDataModule, DDSPDataModule, WaveNetDataModule
from timbrelab.data.datasets import (
    DDSPDataset,
    EpochSampler,
    FeatureSplit,
    UnpairedCQTDataset,
    WaveNetDataset,
    load_stats,
)
from timbrelab.errors import ConfigError, TimbrelabError

SR, FRAME_HOP, CQT_HOP, N_BINS = 16000, 64, 256, 6
N_SAMPLES = 4096                        # 0.256 s: 65 frames, 17 CQT frames
FRAMES = 1 + N_SAMPLES // FRAME_HOP
CQT_FRAMES = 1 + N_SAMPLES // CQT_HOP
ROWS = {"cello": {"train": 5, "valid": 2, "test": 1},
        "source": {"train": 8, "valid": 3, "test": 1},
        "nsynth": {"train": 6, "valid": 2, "test": 1}}
OFFSET = {"cello": 0, "source": 50}
CQT_MEAN, CQT_STD = -4.0, 2.5


# --------------------------------------------------------------------------------------------------
# the fake features tree


def patterned(rows: int, offset: int) -> dict[str, np.ndarray]:
    r = np.arange(rows)[:, None]
    frames = np.arange(FRAMES)[None, :]
    cqt = (100 * r + np.arange(CQT_FRAMES)[None, :] + offset)[:, None, :].repeat(N_BINS, axis=1)
    return {
        "audio": (4096 * r + np.arange(N_SAMPLES)[None, :]).astype(np.int16),
        "cqt": cqt.astype(np.float16),
        "f0_hz": (1000 * r + frames + 1).astype(np.float32),
        "f0_confidence": np.broadcast_to(frames / (FRAMES - 1), (rows, FRAMES)).astype(np.float32),
        "loudness_db": np.broadcast_to(-80.0 + 0.5 * frames + r, (rows, FRAMES)).astype(np.float32),
    }


def gaussian(rows: int, seed: int) -> dict[str, np.ndarray]:
    arrays = patterned(rows, 0)
    rng = np.random.default_rng(seed)
    arrays["cqt"] = rng.normal(CQT_MEAN, CQT_STD, (rows, N_BINS, CQT_FRAMES)).astype(np.float16)
    return arrays


def write_split(split_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    split_dir.mkdir(parents=True, exist_ok=True)
    rows = arrays["audio"].shape[0]
    index = [{"row": i, "id": f"clip{i:03d}", "file": f"clip{i:03d}.wav", "seconds": N_SAMPLES / SR}
             for i in range(rows)]
    (split_dir / "index.json").write_text(json.dumps(index))
    for name, array in arrays.items():
        np.save(split_dir / f"{name}.npy", array)


def write_stats(domain_dir: Path, cqt_mean: float, cqt_std: float, **override) -> None:
    stats = {"sample_rate": SR, "frame_hop": FRAME_HOP, "cqt_hop": CQT_HOP, "hop_ratio": CQT_HOP // FRAME_HOP,
             "n_bins": N_BINS, "cqt": {"mean": cqt_mean, "std": cqt_std},
             "loudness_db": {"mean": -60.0, "std": 10.0, "quantiles": list(np.linspace(-80, 0, 101))},
             "f0": {"mean_midi": 60.0, "std_midi": 5.0, "p01_midi": 45.0, "p99_midi": 72.0,
                    "voiced_fraction": 0.9},
             "computed_on": "train", **override}
    (domain_dir / "stats.json").write_text(json.dumps(stats))


def write_tree(root: Path) -> Path:
    for domain, splits in ROWS.items():
        for split, rows in splits.items():
            make = gaussian(rows, len(split)) if domain == "nsynth" else patterned(rows, OFFSET[domain])
            write_split(root / domain / split, make)
        if domain == "nsynth":
            write_stats(root / domain, CQT_MEAN, CQT_STD)
        else:  # like the features stage: the train split's mean and std
            cqt = np.load(root / domain / "train" / "cqt.npy").astype(np.float64)
            write_stats(root / domain, float(cqt.mean()), float(cqt.std()))
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("features"))


@pytest.fixture
def scratch(tmp_path, root) -> Path:
    """A private copy of the tree, for tests that break files."""
    return Path(shutil.copytree(root, tmp_path / "features"))


def stats_of(root: Path, domain: str) -> Path:
    return root / domain / "stats.json"


def decode_ddsp(item: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(row, start frame) from the f0 pattern, after checking audio and every frame array agree with it."""
    f0 = item["f0_hz"].numpy().astype(np.int64)
    row, start = divmod(int(f0[0]) - 1, 1000)
    frames = len(f0)
    assert np.array_equal(f0, 1000 * row + start + np.arange(frames) + 1)
    pcm = np.rint(item["audio"].numpy() * 32768).astype(np.int64)
    assert np.array_equal(pcm, 4096 * row + start * FRAME_HOP + np.arange(frames * FRAME_HOP))
    assert np.allclose(item["f0_confidence"].numpy(), (start + np.arange(frames)) / (FRAMES - 1))
    assert np.allclose(item["loudness_db"].numpy(), -80.0 + 0.5 * (start + np.arange(frames)) + row)
    return row, start


def raw_cqt(x: torch.Tensor, stats_path: Path) -> np.ndarray:
    stats = load_stats(stats_path)
    return np.rint(x.numpy().astype(np.float64) * stats["cqt"]["std"] + stats["cqt"]["mean"]).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# FeatureSplit


def test_feature_split_reads_the_contract_through_memmaps(root):
    split = FeatureSplit(root / "cello" / "train", stats_of(root, "cello"))
    assert (len(split), split.n_samples, split.n_frames, split.n_cqt_frames, split.n_bins) == (5, 4096, 65, 17, 6)
    assert [e["row"] for e in split.entries] == list(range(5))
    for name in ("audio", "cqt", "f0_hz", "f0_confidence", "loudness_db"):
        assert isinstance(split.array(name), np.memmap), name
    assert split.array("audio").dtype == np.int16 and split.array("cqt").dtype == np.float16

    # Workers get no array data: the pickle is tiny and the copy reopens its own maps.
    blob = pickle.dumps(split)
    assert len(blob) < 4096 < split.array("audio").nbytes
    copy = pickle.loads(blob)
    assert copy._arrays == {}
    assert isinstance(copy.array("cqt"), np.memmap)
    assert np.array_equal(copy.audio(3, 10, 14) * 32768, [4096 * 3 + 10, 4096 * 3 + 11, 4096 * 3 + 12, 4096 * 3 + 13])


def test_datasets_keep_memmaps(root):
    ds = DDSPDataset(root / "cello" / "train", stats_of(root, "cello"), 0.1)
    ds[0]
    assert all(isinstance(a, np.memmap) for a in ds.split._arrays.values())
    assert len(pickle.dumps(ds)) < 4096


# --------------------------------------------------------------------------------------------------
# DDSP


def test_ddsp_whole_clip_shapes_and_values(root):
    ds = DDSPDataset(root / "cello" / "valid", stats_of(root, "cello"), crop_seconds=None, random_crop=False)
    item = ds[1]
    assert set(item) == {"audio", "f0_hz", "f0_confidence", "loudness_db"}
    # n // hop frames and exactly frames * hop samples: the last centred frame (at sample 4096) is dropped.
    assert item["audio"].shape == (4096,)
    assert all(item[k].shape == (64,) for k in ("f0_hz", "f0_confidence", "loudness_db"))
    assert all(v.dtype == torch.float32 for v in item.values())
    assert decode_ddsp(item) == (1, 0)
    assert float(item["audio"][5]) == (4096 + 5) / 32768


@pytest.mark.parametrize("crop_seconds, frames", [(0.1, 25), (0.11, 27), (0.004, 1)])
def test_ddsp_crop_is_aligned_to_the_frame_hop(root, crop_seconds, frames):
    ds = DDSPDataset(root / "cello" / "train", stats_of(root, "cello"), crop_seconds, seed=3)
    assert (ds.crop_frames, ds.crop_samples, ds.max_start) == (frames, frames * 64, 64 - frames)
    starts = []
    for epoch in range(60):
        for index in range(len(ds)):
            item = ds[(epoch, index)]
            assert item["audio"].shape == (frames * 64,) and item["f0_hz"].shape == (frames,)
            row, start = decode_ddsp(item)  # audio[0] is sample start * frame_hop of row `index`
            assert row == index and start == ds.start_frame(index, epoch)
            starts.append(start)
    assert min(starts) == 0 and max(starts) == 64 - frames  # every start, up to the last that fits


def test_ddsp_crops_are_seeded_per_epoch_and_index(root):
    path, stats = root / "cello" / "train", stats_of(root, "cello")
    a, b = DDSPDataset(path, stats, 0.1, seed=11), DDSPDataset(path, stats, 0.1, seed=11)
    table = np.array([[a.start_frame(i, e) for i in range(5)] for e in range(8)])
    assert np.array_equal(table, [[b.start_frame(i, e) for i in range(5)] for e in range(8)])
    assert len({tuple(row) for row in table}) == 8           # every epoch crops differently
    other = DDSPDataset(path, stats, 0.1, seed=12)
    assert not np.array_equal(table, [[other.start_frame(i, e) for i in range(5)] for e in range(8)])
    b.set_epoch(5)                                           # int keys use set_epoch
    assert torch.equal(b[2]["audio"], a[(5, 2)]["audio"])
    val = DDSPDataset(path, stats, 0.1, seed=11, random_crop=False)
    assert {decode_ddsp(val[(e, i)])[1] for e in range(4) for i in range(5)} == {0}


# --------------------------------------------------------------------------------------------------
# WaveNet


def test_wavenet_audio_is_aligned_to_cqt_columns(root):
    stats = stats_of(root, "cello")
    ds = WaveNetDataset(root / "cello" / "train", stats, crop_frames=5, seed=1)
    assert (ds.crop_samples, ds.max_start) == (5 * 256, 4096 // 256 - 5)
    starts = set()
    for epoch in range(40):
        for index in range(len(ds)):
            item = ds[(epoch, index)]
            assert item["cqt"].shape == (6, 5) and item["audio"].shape == (1280,)
            assert item["cqt"].dtype == item["audio"].dtype == torch.float32
            cqt = raw_cqt(item["cqt"], stats)
            assert (cqt == cqt[0]).all()                     # every bin the same column value
            row, start = divmod(int(cqt[0, 0]), 100)
            assert row == index and np.array_equal(cqt[0], 100 * row + start + np.arange(5))
            pcm = np.rint(item["audio"].numpy() * 32768).astype(np.int64)
            # column j of the crop <-> audio from sample (start + j) * cqt_hop of the clip
            for j in range(5):
                assert pcm[j * 256] == 4096 * row + (start + j) * 256
            assert np.array_equal(pcm, 4096 * row + start * 256 + np.arange(1280))
            starts.add(start)
    assert starts == set(range(12))


def test_wavenet_validation_crops_start_at_zero(root):
    stats = stats_of(root, "cello")
    ds = WaveNetDataset(root / "cello" / "valid", stats, crop_frames=16, random_crop=False)
    item = ds[1]
    assert np.array_equal(raw_cqt(item["cqt"], stats)[0], 100 + np.arange(16))
    assert np.rint(float(item["audio"][0]) * 32768) == 4096


# --------------------------------------------------------------------------------------------------
# CycleGAN


def cyclegan(root: Path, seed: int = 0, **kw) -> UnpairedCQTDataset:
    return UnpairedCQTDataset(root / "cello" / "train", root / "source" / "train", stats_of(root, "cello"),
                              stats_of(root, "source"), crop_frames=kw.pop("crop_frames", 8), seed=seed, **kw)


def test_cyclegan_items_come_from_the_assigned_rows(root):
    ds = cyclegan(root, seed=4)
    assert len(ds) == 8                                      # max(5 cello rows, 8 source rows)
    for epoch in range(3):
        rows_a, rows_b = ds.rows(epoch)
        for k in range(len(ds)):
            item = ds[(epoch, k)]
            assert item["a"].shape == item["b"].shape == (1, 6, 8)
            a = raw_cqt(item["a"][0], stats_of(root, "cello"))
            b = raw_cqt(item["b"][0], stats_of(root, "source")) - 50
            assert a[0, 0] // 100 == rows_a[k] and b[0, 0] // 100 == rows_b[k]
            assert np.array_equal(a[0], a[0, 0] + np.arange(8)) and a[0, 0] % 100 <= 17 - 8


def test_cyclegan_is_unpaired(root):
    ds = cyclegan(root, seed=0)
    table = np.zeros((5, 8), dtype=int)                     # a row x b row
    first_b = set()
    for epoch in range(300):
        rows_a, rows_b = ds.rows(epoch)
        # balanced: every b row once (8 items), every a row once or twice, 3 extras distinct
        assert sorted(rows_b) == list(range(8))
        assert np.array_equal(rows_a[:5], range(5)) and len(set(rows_a[5:])) == 3
        np.add.at(table, (rows_a, rows_b), 1)
        first_b.add(int(rows_b[0]))
    assert first_b == set(range(8))                          # item 0 (a row 0) meets every b row
    # b is independent of a: each a row's b distribution is flat (expected 37.5 or 60 per cell)
    expected = table.sum(axis=1, keepdims=True) / 8
    chi2 = float(((table - expected) ** 2 / expected).sum())
    assert chi2 < 56.9                                       # chi-square, 4 * 7 dof, p = 0.001
    a_idx, b_idx = np.nonzero(table)
    assert abs(np.corrcoef(np.repeat(a_idx, table[a_idx, b_idx]), np.repeat(b_idx, table[a_idx, b_idx]))[0, 1]) < 0.1


def test_cyclegan_pairing_changes_with_epoch_and_reproduces(root):
    ds = cyclegan(root, seed=9)
    assert not np.array_equal(ds.rows(0)[1], ds.rows(1)[1])
    again, other = cyclegan(root, seed=9), cyclegan(root, seed=10)
    ds.set_epoch(2)
    again.set_epoch(2)
    for k in range(len(ds)):
        x, y = ds[k], again[k]
        assert torch.equal(x["a"], y["a"]) and torch.equal(x["b"], y["b"])
    assert not all(np.array_equal(ds.rows(e)[1], other.rows(e)[1]) for e in range(3))
    # a and b crops are drawn independently
    offsets = [(int(raw_cqt(ds[(e, 0)]["a"][0, 0], stats_of(root, "cello"))[0] % 100),
                int(raw_cqt(ds[(e, 0)]["b"][0, 0], stats_of(root, "source"))[0] % 100 - 50)) for e in range(30)]
    assert any(x != y for x, y in offsets)
    val = cyclegan(root, seed=9, random_crop=False)
    assert all(raw_cqt(val[k]["a"][0, 0], stats_of(root, "cello"))[0] % 100 == 0 for k in range(8))


# --------------------------------------------------------------------------------------------------
# normalisation


def test_cqt_is_normalised_with_the_domain_stats(root):
    nsynth = stats_of(root, "nsynth")
    ds = WaveNetDataset(root / "nsynth" / "train", nsynth, crop_frames=16, random_crop=False)
    x = torch.stack([ds[i]["cqt"] for i in range(len(ds))]).double()
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05
    raw = np.load(root / "nsynth" / "train" / "cqt.npy")[2, :, :16].astype(np.float64)
    assert np.allclose(ds[2]["cqt"].numpy(), (raw - CQT_MEAN) / CQT_STD, atol=1e-5)

    cg = UnpairedCQTDataset(root / "cello" / "train", root / "nsynth" / "train", stats_of(root, "cello"), nsynth,
                            crop_frames=17, random_crop=False)
    b = torch.stack([cg[k]["b"] for k in range(len(cg))]).double()
    assert abs(float(b.mean())) < 0.05 and abs(float(b.std()) - 1.0) < 0.05
    a = torch.stack([cg[k]["a"] for k in range(5)]).double()  # cello's own train stats: exactly 0 / 1
    assert abs(float(a.mean())) < 1e-4 and abs(float(a.std(unbiased=False)) - 1.0) < 1e-4


# --------------------------------------------------------------------------------------------------
# DataModules and loaders


def batches(loader, epoch: int, n: int = 2) -> list[dict[str, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def assert_same(x: list[dict], y: list[dict]) -> None:
    assert len(x) == len(y)
    for bx, by in zip(x, y):
        assert bx.keys() == by.keys() and all(torch.equal(bx[k], by[k]) for k in bx)


@pytest.mark.parametrize("make", [
    lambda root, w: DDSPDataModule(root, "cello", batch_size=2, crop_seconds=0.1, num_workers=w, seed=7),
    lambda root, w: CycleGANDataModule(root, "cello", "source", batch_size=3, crop_frames=8, num_workers=w, seed=7),
])
def test_workers_yield_the_same_batches(root, make):
    serial, parallel, rerun = make(root, 0), make(root, 2), make(root, 0)
    for dm in (serial, parallel, rerun):
        dm.setup("fit")
    loaders = [dm.train_dataloader() for dm in (serial, parallel, rerun)]
    for epoch in (0, 1):
        first = batches(loaders[0], epoch)
        assert_same(first, batches(loaders[1], epoch))
        assert_same(first, batches(loaders[2], epoch))
    assert not all(torch.equal(x, y) for x, y in zip(batches(loaders[0], 0)[0].values(),
                                                        batches(loaders[0], 1)[0].values()))


def test_datamodule_loaders(root):
    dm = DDSPDataModule(root, "cello", batch_size=2, crop_seconds=0.1, seed=1)
    dm.setup("fit")
    train = dm.train_dataloader()
    assert isinstance(train.sampler, EpochSampler)
    orders = [[i for _, i in (train.sampler.set_epoch(e) or train.sampler)] for e in range(4)]
    assert all(sorted(o) == list(range(5)) for o in orders) and len({tuple(o) for o in orders}) > 1
    batch = next(iter(train))
    assert batch["audio"].shape == (2, 1600) and batch["f0_hz"].shape == (2, 25)
    val = [decode_ddsp({k: v[i] for k, v in b.items()}) for b in dm.val_dataloader() for i in range(len(b["audio"]))]
    assert val == [(0, 0), (1, 0)]                            # in order, crops at frame 0
    assert dm.stats("cello")["frame_hop"] == FRAME_HOP

    wn = WaveNetDataModule(root, "source", batch_size=4, crop_frames=4)
    wn.setup("fit")
    batch = next(iter(wn.train_dataloader()))
    assert batch["cqt"].shape == (4, 6, 4) and batch["audio"].shape == (4, 1024)
    wn.setup("test")
    assert len(wn.test_dataloader().dataset) == 1


def test_lightning_sets_the_epoch_of_training_crops(root, tmp_path):
    import lightning.pytorch as pl

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.seen: dict[int, list[tuple[int, int]]] = {}

        def training_step(self, batch, _):
            for i in range(len(batch["f0_hz"])):
                item = {k: v[i] for k, v in batch.items()}
                self.seen.setdefault(self.current_epoch, []).append(decode_ddsp(item))
            return (self.weight * batch["audio"].mean()).sum()

        def validation_step(self, batch, _):
            for i in range(len(batch["f0_hz"])):
                self.seen.setdefault("val", []).append(decode_ddsp({k: v[i] for k, v in batch.items()}))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = DDSPDataModule(root, "cello", batch_size=2, crop_seconds=0.1, seed=5)
    model = Recorder()
    pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path).fit(model, dm)
    reference = DDSPDataset(root / "cello" / "train", stats_of(root, "cello"), 0.1, seed=5)
    for epoch in range(3):
        assert sorted(model.seen[epoch]) == sorted((i, reference.start_frame(i, epoch)) for i in range(5))
    assert model.seen[0] != model.seen[1]
    assert model.seen["val"] == [(0, 0), (1, 0)] * 3          # every epoch the same fixed crops


# --------------------------------------------------------------------------------------------------
# errors


def test_mismatched_frames_name_the_file(scratch):
    np.save(scratch / "cello" / "train" / "f0_hz.npy", np.ones((5, FRAMES - 1), np.float32))
    with pytest.raises(TimbrelabError, match=r"f0_hz\.npy: shape \(5, 64\), expected \(5, 65\).*dvc repro features"):
        DDSPDataset(scratch / "cello" / "train", stats_of(scratch, "cello"), 0.1)


def test_cqt_bins_disagreeing_with_stats_name_both(scratch):
    write_stats(scratch / "cello", 0.0, 1.0, n_bins=N_BINS + 1)
    with pytest.raises(TimbrelabError, match=r"cqt\.npy: shape \(5, 6, 17\), expected \(5, 7, 17\).*stats\.json"):
        WaveNetDataset(scratch / "cello" / "train", stats_of(scratch, "cello"), crop_frames=4)


def test_row_count_and_dtype_errors(scratch):
    split = scratch / "cello" / "train"
    np.save(split / "loudness_db.npy", np.zeros((4, FRAMES), np.float32))
    with pytest.raises(TimbrelabError, match=r"loudness_db\.npy: 4 rows, but .*index\.json lists 5"):
        FeatureSplit(split, stats_of(scratch, "cello"))
    np.save(split / "loudness_db.npy", np.zeros((5, FRAMES), np.float32))
    np.save(split / "audio.npy", np.zeros((5, N_SAMPLES), np.float32))
    with pytest.raises(TimbrelabError, match=r"audio\.npy: dtype float32, expected int16"):
        FeatureSplit(split, stats_of(scratch, "cello"))
    np.save(split / "audio.npy", np.zeros((5, N_SAMPLES), np.int16))
    data = (split / "cqt.npy").read_bytes()
    (split / "cqt.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(TimbrelabError, match=r"cqt\.npy: unreadable or truncated"):
        FeatureSplit(split, stats_of(scratch, "cello"))


def test_hop_ratio_must_be_an_integer(scratch):
    write_stats(scratch / "cello", 0.0, 1.0, cqt_hop=200, hop_ratio=3)
    with pytest.raises(ConfigError, match=r"cqt_hop=200 is not an integer multiple of frame_hop=64"):
        FeatureSplit(scratch / "cello" / "train", stats_of(scratch, "cello"))


def test_missing_and_empty_splits(scratch):
    with pytest.raises(TimbrelabError, match=r"viola: no such feature domain.*features\.domains.*dvc repro features"):
        DDSPDataModule(scratch, "viola", batch_size=2, crop_seconds=0.1).setup("fit")
    (scratch / "cello" / "stats.json").unlink()
    with pytest.raises(TimbrelabError, match=r"cello/stats\.json: no such stats file"):
        DDSPDataModule(scratch, "cello", batch_size=2, crop_seconds=0.1).stats("cello")
    write_stats(scratch / "cello", 0.0, 1.0)
    shutil.rmtree(scratch / "source" / "valid")
    with pytest.raises(TimbrelabError, match=r"source/valid: no such feature split"):
        CycleGANDataModule(scratch, "cello", "source", batch_size=2, crop_frames=8).setup("validate")
    empty = scratch / "cello" / "valid"                       # what the features stage writes then
    (empty / "index.json").write_text("[]")
    for name in ("audio", "cqt", "f0_hz", "f0_confidence", "loudness_db"):
        np.save(empty / f"{name}.npy", np.zeros((0,), np.float32))
    assert len(FeatureSplit(empty, stats_of(scratch, "cello"))) == 0
    with pytest.raises(TimbrelabError, match=r"cello/valid/index\.json: the split is empty"):
        DDSPDataModule(scratch, "cello", batch_size=2, crop_seconds=0.1).setup("fit")


def test_impossible_crops_are_config_errors(root):
    split, stats = root / "cello" / "train", stats_of(root, "cello")
    with pytest.raises(ConfigError, match=r"crop_seconds=0.5 gives 125 frames"):
        DDSPDataset(split, stats, 0.5)
    with pytest.raises(ConfigError, match=r"crop_seconds=0.001 gives 0 frames"):
        DDSPDataset(split, stats, 0.001)
    with pytest.raises(ConfigError, match=r"crop_frames=17 must be an integer from 1 to 16"):
        WaveNetDataset(split, stats, crop_frames=17)   # 17 columns exist, but only 16 have a full audio hop
    assert cyclegan(root, crop_frames=17).crop_frames == 17
    with pytest.raises(ConfigError, match=r"batch_size must be a positive integer"):
        DDSPDataModule(root, "cello", batch_size=0, crop_seconds=0.1)
