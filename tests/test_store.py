"""prefdyn._store: content keys, atomic streamed writes, validated reads that recompute."""

from __future__ import annotations

import hashlib
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import prefdyn._store as store_mod
from prefdyn._store import ArtifactStore, TensorSpec, read_tensor, write_tensors

STORE = ArtifactStore("things", version=3, label="test things")
PARTS = {"model": "fp-abc", "data": "h-123", "beta": 0.1}
EXPECTED = {"x": TensorSpec((2, 3), torch.float32), "n": TensorSpec((2,), torch.long)}
GOOD = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor([4, 5])}


@pytest.fixture
def computed() -> list[int]:
    return []


def _get(tmp_path, computed, key=None, check=None):
    def compute():
        computed.append(1)
        return {name: t.clone() for name, t in GOOD.items()}

    return STORE.get_or_compute(key or STORE.key(**PARTS), EXPECTED, compute, cache_dir=tmp_path,
                                check=check, info={"note": "for a human"})


def _path(tmp_path):
    return STORE.path(STORE.key(**PARTS), tmp_path)


def _equal(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _leftovers(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "things").iterdir() if p.suffix != ".safetensors")


def test_miss_computes_and_writes_then_hit_reads_without_computing(tmp_path, computed):
    first = _get(tmp_path, computed)
    assert computed == [1]
    assert _path(tmp_path).is_file()
    second = _get(tmp_path, computed)
    assert computed == [1]
    assert _equal(first, GOOD) and _equal(second, GOOD)
    assert _leftovers(tmp_path) == []


def test_file_is_plain_safetensors_with_key_parts_and_version_in_metadata(tmp_path, computed):
    _get(tmp_path, computed)
    path = _path(tmp_path)
    assert path.parent.name == "things" and path.name == f"{STORE.key(**PARTS)}.safetensors"
    assert _equal(load_file(path), GOOD)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    assert meta == {"format": "prefdyn-store-v1", "kind": "things", "version": "3", "key": path.stem,
                    "parts": '{"beta":0.1,"data":"h-123","model":"fp-abc"}', "note": "for a human"}


def test_key_is_the_sha256_of_the_stable_json_of_kind_version_and_parts():
    # Written out by hand: no Python hash(), so the same in every process and on every machine.
    text = ('{"kind":"things","parts":{"beta":0.1,"data":"h-123","model":"fp-abc"},'
            '"store":"prefdyn-store-v1","version":3}')
    assert str(STORE.key(**PARTS)) == hashlib.sha256(text.encode()).hexdigest()[:32]
    assert STORE.key(**PARTS) == STORE.key(**dict(reversed(PARTS.items())))  # order of the parts


@pytest.mark.parametrize("change", [{"model": "fp-abd"}, {"data": "h-124"}, {"beta": 0.01},
                                    {"extra": "x"}])
def test_any_part_changing_changes_the_key(change):
    assert STORE.key(**{**PARTS, **change}) != STORE.key(**PARTS)


def test_kind_and_version_are_part_of_the_key():
    key = STORE.key(**PARTS)
    assert ArtifactStore("things", version=4).key(**PARTS) != key
    assert ArtifactStore("other", version=3).key(**PARTS).digest != key.digest
    with pytest.raises(ValueError, match="cannot address"):
        ArtifactStore("other", version=3).path(key)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_file_is_recomputed_with_a_warning_naming_it(tmp_path, computed, damage):
    _get(tmp_path, computed)
    path = _path(tmp_path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:-10], "garbage": b"not safetensors", "empty": b""}[damage])
    with pytest.warns(UserWarning, match=rf"corrupt test things cache file .*{path.name}.*unreadable"):
        again = _get(tmp_path, computed)
    assert computed == [1, 1]
    assert _equal(again, GOOD)
    assert path.read_bytes() == data  # rewritten whole
    _get(tmp_path, computed)
    assert computed == [1, 1]


@pytest.mark.parametrize("field", ["key", "kind", "version", "format", "parts"])
def test_file_with_wrong_metadata_is_recomputed(tmp_path, computed, field):
    _get(tmp_path, computed)
    path = _path(tmp_path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    save_file(GOOD, path, metadata={**meta, field: "something else"})
    with pytest.warns(UserWarning, match="metadata"):
        _get(tmp_path, computed)
    assert computed == [1, 1]


@pytest.mark.parametrize("tensors", [
    {"x": torch.zeros(2, 4), "n": torch.tensor([4, 5])},                  # shape
    {"x": torch.zeros(2, 3, dtype=torch.float64), "n": torch.tensor([4, 5])},  # dtype
    {"x": torch.zeros(2, 3)},                                              # missing tensor
    {**GOOD, "y": torch.zeros(1)},                                         # unexpected tensor
])
def test_file_with_other_tensors_than_expected_is_recomputed(tmp_path, computed, tensors):
    _get(tmp_path, computed)
    path = _path(tmp_path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, path, metadata=meta)
    with pytest.warns(UserWarning, match="corrupt test things cache"):
        again = _get(tmp_path, computed)
    assert _equal(again, GOOD)


def test_failed_check_recomputes_a_stored_file_and_never_stores_a_failing_result(tmp_path, computed):
    def small(tensors):
        return None if tensors["x"].max() < 100 else "too large"

    _get(tmp_path, computed, check=small)
    with pytest.warns(UserWarning, match="too large"):
        assert STORE.load(STORE.key(**PARTS), EXPECTED, cache_dir=tmp_path,
                          check=lambda t: "too large") is None
    path = _path(tmp_path)
    path.unlink()
    with pytest.warns(UserWarning, match="not caching test things: never"):
        _get(tmp_path, computed, check=lambda t: "never")
    assert not path.exists()


def test_computed_result_of_the_wrong_shape_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"x is \(1, 3\)"):
        STORE.get_or_compute(STORE.key(**PARTS), EXPECTED,
                             lambda: {"x": torch.zeros(1, 3), "n": torch.tensor([4, 5])}, cache_dir=tmp_path)
    assert not _path(tmp_path).exists()


def test_failed_compute_leaves_nothing_behind(tmp_path):
    def boom():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        STORE.get_or_compute(STORE.key(**PARTS), EXPECTED, boom, cache_dir=tmp_path)
    assert not (tmp_path / "things").exists() or _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["while writing", "before os.replace"])
def test_interrupted_write_leaves_the_old_file_intact_and_no_temp_file(tmp_path, computed, monkeypatch,
                                                                       where):
    _get(tmp_path, computed)
    path = _path(tmp_path)
    before = path.read_bytes()
    if where == "while writing":
        def half(f, tensors, metadata):
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
            raise KeyboardInterrupt

        monkeypatch.setattr(store_mod, "_serialize", half)
    else:
        def no_replace(src, dst):
            raise KeyboardInterrupt

        monkeypatch.setattr(store_mod.os, "replace", no_replace)
    with pytest.raises(KeyboardInterrupt):
        STORE.save(STORE.key(**PARTS), {"x": torch.ones(2, 3), "n": torch.tensor([0, 0])}, cache_dir=tmp_path)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_concurrent_writers_of_one_key_leave_one_whole_file(tmp_path):
    key = STORE.key(**PARTS)
    versions = [{"x": torch.full((2, 3), float(i)), "n": torch.tensor([i, i])} for i in range(8)]
    threads = [threading.Thread(target=STORE.save, args=(key, v), kwargs={"cache_dir": tmp_path})
               for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = STORE.load(key, EXPECTED, cache_dir=tmp_path)
    assert got is not None and any(_equal(got, v) for v in versions)
    assert _leftovers(tmp_path) == []


def test_write_tensors_streams_every_dtype_and_layout_safetensors_reads(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "f32": base, "f64": base.double(), "f16": base.half(), "bf16": base.bfloat16(),
        "i64": torch.tensor([-1, 2**40]), "i32": torch.tensor([7], dtype=torch.int32),
        "u8": torch.tensor([255], dtype=torch.uint8), "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
        "transposed": base.t(), "view_of_f32": base[1],  # non-contiguous; shares storage
        "grad": torch.ones(2, requires_grad=True),
    }
    path = write_tensors(tmp_path / "sub" / "w.safetensors", tensors, {"who": "test"})
    loaded = load_file(path)
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t.detach()), name
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"who": "test"}
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]


def test_read_tensor_reads_one_tensor_and_checks_it(tmp_path):
    path = write_tensors(tmp_path / "w.safetensors", GOOD)
    assert torch.equal(read_tensor(path, "n", TensorSpec((2,), torch.long)), GOOD["n"])
    with pytest.raises(ValueError, match=r"w\.safetensors.*n is \(2,\)"):
        read_tensor(path, "n", TensorSpec((3,), torch.long))


def test_unsupported_dtype_or_metadata_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="complex"):
        write_tensors(tmp_path / "w.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(TypeError, match="strings"):
        write_tensors(tmp_path / "w.safetensors", GOOD, {"rows": 2})
    assert list(tmp_path.iterdir()) == []

