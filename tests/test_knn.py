"""KNN lists and the feature cache: chunked top-k equals brute force, cache hits, keys, atomic files."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from stego_lite import features, knn
from stego_lite.backbone import Backbone
from stego_lite.data import SegTransform


class PoolBackbone(Backbone):
    """A counting stand-in for a ViT: average-pools 4 x 4 patches, (B, 3, H, W) -> (B, 3, H/4, W/4)."""

    def __init__(self, name: str = "pool", patch_size: int = 4) -> None:
        super().__init__(name, patch_size, 3)
        self.calls = 0

    def forward(self, img):
        self.calls += 1
        return F.avg_pool2d(img, self.patch_size)


class Images(torch.utils.data.Dataset):
    """Random images and labels, deterministic per index."""

    name, split = "random", "train"

    def __init__(self, n: int = 20, size: int = 16, seed: int = 0, crop: str = "none") -> None:
        self.n, self.size, self.seed = n, size, seed
        self.transform = SegTransform(None, crop=crop) if crop == "none" else SegTransform(size, crop=crop)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(1000 * self.seed + i)
        return {"image": torch.randn(3, self.size, self.size, generator=g),
                "label": torch.randint(-1, 4, (self.size, self.size), generator=g), "index": i}


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_knn_equals_brute_force(chunk_size):
    desc = torch.randn(100, 16, generator=torch.Generator().manual_seed(0))
    unit = F.normalize(desc, dim=1)
    brute = (unit @ unit.T).topk(10, dim=1).indices  # the full N x N matrix
    got = knn.knn_indices(desc, 10, chunk_size=chunk_size)
    assert got.shape == (100, 10) and got.dtype == torch.long
    assert torch.equal(got, brute)
    assert torch.equal(got[:, 0], torch.arange(100)), "rank 0 is the image itself"


def test_knn_errors():
    with pytest.raises(ValueError, match="k = 11"):
        knn.knn_indices(torch.randn(10, 3), 11)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        knn.knn_indices(torch.randn(10, 3, 2), 2)


def test_global_descriptors_are_pooled_and_normalised():
    feats = torch.randn(5, 4, 3, 3)
    desc = knn.global_descriptors(feats)
    assert torch.allclose(desc, feats.mean((2, 3)) / feats.mean((2, 3)).norm(dim=1, keepdim=True), atol=1e-6)


def test_positives_come_from_ranks_one_to_seven():
    nns = torch.arange(30).repeat(50, 1) + 100 * torch.arange(50)[:, None]  # row i: 100 i + rank
    idx = torch.arange(50).repeat(20)
    pos = knn.sample_positives(nns, idx, generator=torch.Generator().manual_seed(0))
    rank = pos - 100 * idx
    assert rank.min() == 1 and rank.max() == 7 and len(rank.unique()) == 7
    with pytest.raises(ValueError, match="num_neighbors"):
        knn.sample_positives(nns, idx, num_neighbors=30)


def test_feature_cache_hit_and_content(cache):
    backbone, ds = PoolBackbone(), Images()
    fs = features.cached_features(backbone, ds, batch_size=8)
    calls = backbone.calls
    assert fs.feats.shape == (20, 3, 4, 4) and fs.labels.shape == (20, 16, 16)
    assert fs.labels.dtype == torch.long
    want = torch.stack([F.avg_pool2d(ds[i]["image"][None], 4)[0] for i in range(20)])
    assert torch.allclose(fs.feats, want, atol=1e-6)
    assert torch.equal(fs.labels, torch.stack([ds[i]["label"] for i in range(20)]))
    again = features.cached_features(backbone, ds)
    assert backbone.calls == calls, "the second call reads the cache"
    assert torch.equal(again.feats, fs.feats) and again.key == fs.key
    assert not list(cache.rglob("*.tmp")), "no temporary files are left behind"


def test_knn_cache_hit_with_and_without_features(cache):
    backbone, ds = PoolBackbone(), Images()
    nns = knn.nearest_neighbors(backbone, ds, k=5, batch_size=8)
    calls = backbone.calls
    assert calls > 0 and nns.shape == (20, 5)
    desc = knn.global_descriptors(torch.stack([F.avg_pool2d(ds[i]["image"][None], 4)[0] for i in range(20)]))
    assert torch.equal(nns, knn.knn_indices(desc, 5))
    assert torch.equal(knn.nearest_neighbors(backbone, ds, k=5), nns)
    assert backbone.calls == calls, "the second call reads the cache"
    assert (features.cache_path(features.feature_key(backbone, ds), "knn", "-k5")).is_file()
    other = Images(seed=1)
    fs = features.cached_features(backbone, ds)
    with pytest.raises(ValueError, match="same backbone and dataset"):
        knn.nearest_neighbors(backbone, other, k=5, features=fs)


def test_damaged_cache_file_is_recomputed(cache):
    backbone, ds = PoolBackbone(), Images(n=6)
    fs = features.cached_features(backbone, ds)
    want = fs.feats.clone()   # fs.feats is memory-mapped from the file that is damaged below
    path = features.cache_path(fs.key)
    path.write_bytes(b"not a torch file")
    again = features.cached_features(backbone, ds)
    assert torch.equal(again.feats, want)


def test_cache_key_changes_with_every_part():
    key = features.feature_key(PoolBackbone(), Images())
    for field in dataclasses.fields(key):
        value = getattr(key, field.name)
        value = value + 1 if isinstance(value, int) else value + "x"
        changed = dataclasses.replace(key, **{field.name: value})
        assert changed.name != key.name, field.name
    # ...and the parts really come from the backbone and the dataset
    derived = {
        "backbone": features.feature_key(PoolBackbone(name="pool2"), Images()),
        "patch_size": features.feature_key(PoolBackbone(patch_size=2), Images()),
        "res": features.feature_key(PoolBackbone(), Images(size=8)),
        "crop": features.feature_key(PoolBackbone(), Images(crop="center")),
        "n_images": features.feature_key(PoolBackbone(), Images(n=21)),
        "content": features.feature_key(PoolBackbone(), Images(seed=3)),
    }
    for part, other in derived.items():
        assert getattr(other, part) != getattr(key, part), part
        assert other.name != key.name, part
    val = Images()
    val.split = "val"
    assert features.feature_key(PoolBackbone(), val).name != key.name
    # a subset is keyed by its parent and its indices
    subset = features.feature_key(PoolBackbone(), torch.utils.data.Subset(Images(), range(10)))
    assert subset.dataset == "random" and subset.split == "train-subset" and subset.n_images == 10
    shifted = features.feature_key(PoolBackbone(), torch.utils.data.Subset(Images(), range(1, 11)))
    assert shifted.content != subset.content


def test_weights_fingerprint_sees_parameters():
    a = torch.nn.Conv2d(3, 4, 1)

    class Conv(Backbone):
        def __init__(self):
            super().__init__("conv", 1, 4)
            self.conv = a

        def forward(self, img):
            return self.conv(img)

    backbone = Conv()
    before = features.weights_fingerprint(backbone)
    assert features.weights_fingerprint(backbone) == before   # remembered
    with torch.no_grad():
        a.weight[0, 0] += 1
    changed = features.weights_fingerprint(backbone)
    assert changed != before
    a.weight = torch.nn.Parameter(a.weight.detach().clone())   # a new tensor, the same values
    assert features.weights_fingerprint(backbone) == changed
    a.bias = torch.nn.Parameter(torch.zeros(4))
    assert features.weights_fingerprint(backbone) != changed
