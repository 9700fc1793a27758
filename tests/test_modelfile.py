"""The model file: round trips, layout facts, the C++ reader against the Python one, bad files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from mfile_helpers import SMOLLM2_GGUF, tiny_model

from edgelut import _core
from edgelut.kernels import PackedMatrix, pack
from edgelut.models.modelfile import (
    ALIGNMENT,
    ModelFile,
    ShardSpec,
    expected_tensors,
    read_model_file,
    write_model_file,
)
from edgelut.quantize.rtn import quantize_rtn


def _quantized(model, qtype="q4", group=32, asym=True):
    out = {}
    for name, a in model.tensors.items():
        if a.ndim == 2:
            c, s, m = quantize_rtn(a, qtype, group, asym=asym)
            out[name] = pack(c, s, m, qtype, group)
        else:
            out[name] = a
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    model = tiny_model(arch="qwen2")
    tensors = _quantized(model)
    path = tmp_path_factory.mktemp("mf") / "tiny.elut"
    write_model_file(path, model.config, model.tokenizer, tensors, recipe={"method": "rtn", "bits": 4})
    return path, model, tensors


def test_round_trip_python(written):
    path, model, tensors = written
    f = read_model_file(path)
    cfg = f.config
    want = model.config
    assert cfg.rms_norm_eps == pytest.approx(want.rms_norm_eps, rel=1e-6)  # stored as float32
    cfg.rms_norm_eps = want.rms_norm_eps
    assert cfg == want
    assert f.tokenizer == model.tokenizer
    assert f.recipe == {"method": "rtn", "bits": 4}
    assert f.format_version == 1
    assert f.shard == ShardSpec.full(want)
    assert list(f.entries) == list(expected_tensors(want))
    for name, t in tensors.items():
        got = f.tensor(name)
        if isinstance(t, PackedMatrix):
            assert isinstance(got, PackedMatrix)
            assert (got.n, got.k, got.qtype, got.group_size, got.asym) == (t.n, t.k, "q4", 32, True)
            assert np.array_equal(np.asarray(got.data), np.asarray(t.data))
            assert np.array_equal(got.dequantize(), t.dequantize())
        else:
            assert got.dtype == np.float32
            assert np.array_equal(got, t)


def test_packed_tensor_is_zero_copy_view_of_the_map(written):
    path, _, _ = written
    f = read_model_file(path)
    pm = f.tensor("blk.0.attn_q.weight")
    e = f.entries["blk.0.attn_q.weight"]
    raw = f.raw("blk.0.attn_q.weight")
    # The PackedMatrix bytes are the mapped file bytes, not a copy.
    assert np.asarray(pm.data).__array_interface__["data"][0] == raw.__array_interface__["data"][0]
    assert e.nbytes == pm.nbytes


def test_layout_is_page_aligned_and_layer_contiguous(written):
    path, model, _ = written
    f = read_model_file(path)
    assert f.data_offset % ALIGNMENT == 0
    for e in f.entries.values():
        assert e.offset % ALIGNMENT == 0
    assert len(f.layer_ranges) == model.config.n_layers
    for i, (off, size) in enumerate(f.layer_ranges):
        mine = [e for e in f.entries.values() if e.name.startswith(f"blk.{i}.")]
        assert off == min(e.offset for e in mine)
        assert off + size >= max(e.offset + e.nbytes for e in mine)
        others = [e for e in f.entries.values() if not e.name.startswith(f"blk.{i}.")]
        assert all(e.offset + e.nbytes <= off or e.offset >= off + size for e in others)
    # Global tensors first, then layers in order, then the head.
    names = list(f.entries)
    assert names[0] == "token_embd.weight" and names[-2:] == ["output_norm.weight", "output.weight"]


def test_standard_gguf_reader_can_list_it(written):
    import gguf

    path, model, _ = written
    r = gguf.GGUFReader(path)
    assert r.fields["general.architecture"].contents() == "qwen2"
    assert r.fields["general.alignment"].contents() == ALIGNMENT
    assert r.fields["qwen2.block_count"].contents() == model.config.n_layers
    t = next(t for t in r.tensors if t.name == "blk.1.ffn_down.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.I8 and len(t.shape) == 1


def test_f16_float_tensors_and_tied_embeddings(tmp_path):
    model = tiny_model(tie=True, seed=3)
    tensors = _quantized(model, "q2", 64, asym=False)
    path = write_model_file(tmp_path / "t.elut", model.config, model.tokenizer, tensors, float_type="f16")
    f = read_model_file(path)
    assert "output.weight" not in f.entries
    norm = f.tensor("output_norm.weight")
    assert norm.dtype == np.float16
    assert np.array_equal(norm, model.tensors["output_norm.weight"].astype(np.float16))


def test_writer_checks_the_spec_before_writing(tmp_path):
    model = tiny_model()
    tensors = _quantized(model)
    path = tmp_path / "bad.elut"
    broken = dict(tensors)
    del broken["blk.1.ffn_up.weight"]
    with pytest.raises(ValueError, match="missing tensor.*blk.1.ffn_up.weight"):
        write_model_file(path, model.config, model.tokenizer, broken)
    broken = dict(tensors)
    broken["blk.0.attn_norm.weight"] = np.ones(7, np.float32)
    with pytest.raises(ValueError, match=r"blk.0.attn_norm.weight has shape \(7,\)"):
        write_model_file(path, model.config, model.tokenizer, broken)
    broken = dict(tensors)
    broken["blk.0.extra.weight"] = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="unexpected tensor"):
        write_model_file(path, model.config, model.tokenizer, broken)
    broken = dict(tensors)
    broken["output_norm.weight"] = np.full(model.config.hidden_size, np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        write_model_file(path, model.config, model.tokenizer, broken)
    assert not path.exists()


def test_shard_fields_round_trip(tmp_path):
    model = tiny_model()
    tensors = _quantized(model)
    shard = ShardSpec(1, 2, [2, 3], [1], [(96, 192)])
    path = write_model_file(tmp_path / "s.elut", model.config, model.tokenizer, tensors, shard=shard)
    f = read_model_file(path)
    assert f.shard == shard
    r = _core.ModelFileReader(str(path))
    assert r.get("edgelut.shard.heads") == [2, 3]
    assert r.get("edgelut.shard.ffn_columns") == [96, 192]


# -- the C++ reader ----------------------------------------------------------------------------


def test_cpp_crc32_equals_zlib():
    rng = np.random.default_rng(0)
    for n in (0, 1, 3, 4, 5, 31, 1000, 4097):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert _core.crc32(data) == zlib.crc32(data)
    # Running CRC, like zlib.
    assert _core.crc32(b"world", _core.crc32(b"hello ")) == zlib.crc32(b"hello world")


def test_cpp_reader_agrees_with_python_reader(written):
    path, model, _ = written
    py = read_model_file(path)
    cc = _core.ModelFileReader(str(path))
    assert cc.format_version == py.format_version
    assert cc.data_offset == py.data_offset
    assert cc.file_size == py.file_size
    h = cc.hparams
    cfg = py.config
    assert (h["architecture"], h["vocab_size"], h["hidden_size"], h["intermediate_size"]) == (
        cfg.architecture,
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.intermediate_size,
    )
    assert (h["n_layers"], h["n_heads"], h["n_kv_heads"], h["head_dim"]) == (
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
    )
    assert h["rms_norm_eps"] == pytest.approx(cfg.rms_norm_eps)
    assert (h["rope_style"], h["tie_embeddings"], h["attn_bias"]) == (cfg.rope_style, False, True)
    assert cc.get("edgelut.tokenizer.json") == model.tokenizer.tokenizer_json
    assert cc.get("edgelut.eos_token_ids") == [2, 3]
    assert cc.layers() == py.layer_ranges
    tensors = cc.tensors()
    assert [t["name"] for t in tensors] == list(py.entries)
    for t in tensors:
        e = py.entries[t["name"]]
        assert (t["offset"], t["nbytes"], t["crc32"], t["qtype"]) == (e.offset, e.nbytes, e.crc32, e.qtype)
        assert t["shape"] == e.shape
        assert (t["group_size"], t["asym"], t["packed"]) == (e.group_size, e.asym, e.packed)


def _corrupt_copy(src: Path, dst: Path, edit) -> Path:
    data = bytearray(src.read_bytes())
    data = edit(data)
    dst.write_bytes(bytes(data))
    return dst


def _both_reject(path: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_model_file(path)
    with pytest.raises(ValueError, match=match):
        _core.ModelFileReader(str(path))


def test_bad_files_are_rejected_with_one_clear_line(written, tmp_path):
    path, _, _ = written
    f = read_model_file(path)
    e = f.entries["blk.1.ffn_down.weight"]

    # Truncated inside the tensor data.
    p = _corrupt_copy(path, tmp_path / "trunc.elut", lambda d: d[: e.offset + 10])
    _both_reject(p, "truncated")
    # Truncated inside the header.
    p = _corrupt_copy(path, tmp_path / "trunc_hdr.elut", lambda d: d[:200])
    _both_reject(p, "truncated")

    # One flipped byte in a packed tensor: CRC mismatch naming the tensor.
    def flip(d):
        d[e.offset + 5] ^= 0x40
        return d

    p = _corrupt_copy(path, tmp_path / "crc.elut", flip)
    _both_reject(p, r"corrupt: tensor blk\.1\.ffn_down\.weight")
    # ... which the fast path (no CRC check) does not look at.
    read_model_file(p, verify_crc=False)
    _core.ModelFileReader(str(p), False)

    # Not GGUF at all.
    p = tmp_path / "foreign.bin"
    p.write_bytes(b"PK\x03\x04" + bytes(100))
    _both_reject(p, "not an edgelut model file")
    # Empty file.
    p = tmp_path / "empty.elut"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.elut"):
        read_model_file(p)
    with pytest.raises(ValueError, match="empty.elut"):
        _core.ModelFileReader(str(p))

    # Missing file.
    with pytest.raises(FileNotFoundError):
        read_model_file(tmp_path / "nope.elut")
    with pytest.raises(OSError, match="nope.elut"):
        _core.ModelFileReader(str(tmp_path / "nope.elut"))


def _gguf_without_edgelut(path: Path, arch: str | None) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch or "llama")
    if arch is None:
        w.kv_data[0].pop("general.architecture")
    w.add_uint32("llama.block_count", 1)
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_llama_cpp_gguf_is_recognised_as_foreign(tmp_path):
    p = _gguf_without_edgelut(tmp_path / "llamacpp.gguf", "llama")
    _both_reject(p, "is a llama.cpp GGUF.*edgelut quantize")
    p = _gguf_without_edgelut(tmp_path / "bare.gguf", None)
    _both_reject(p, "without edgelut metadata")


def test_real_llama_cpp_file_is_recognised_as_foreign():
    _both_reject(SMOLLM2_GGUF, "is a llama.cpp GGUF")


def test_newer_format_version_is_refused(written, tmp_path):
    path, _, _ = written
    data = path.read_bytes()
    key = b"edgelut.format_version"
    i = data.index(key) + len(key)
    assert struct.unpack_from("<I", data, i)[0] == 4  # GGUF uint32 type tag
    newer = bytearray(data)
    struct.pack_into("<I", newer, i + 4, 2)
    p = tmp_path / "newer.elut"
    p.write_bytes(bytes(newer))
    _both_reject(p, "format version 2")


def test_cpp_reader_never_crashes_on_truncation_or_flipped_header_bytes(written, tmp_path):
    """Fuzz-ish: every outcome is a clean open or a ValueError naming the file."""
    path, _, _ = written
    data = path.read_bytes()
    f = read_model_file(path)
    header_end = f.data_offset
    p = tmp_path / "fuzz.elut"
    rng = np.random.default_rng(1)
    cuts = sorted(set(rng.integers(0, len(data), 150).tolist()) | {0, 1, 3, 4, 8, 16, 24, header_end})
    data_end = max(e.offset + e.nbytes for e in f.entries.values())
    for cut in cuts:
        p.write_bytes(data[:cut])
        if cut >= data_end:  # only the trailing alignment padding is gone
            _core.ModelFileReader(str(p))
            continue
        with pytest.raises(ValueError, match="fuzz.elut"):
            _core.ModelFileReader(str(p))
    for _ in range(400):
        d = bytearray(data[:header_end])
        for _ in range(int(rng.integers(1, 4))):
            d[int(rng.integers(0, header_end))] ^= 1 << int(rng.integers(0, 8))
        p.write_bytes(bytes(d) + data[header_end:])
        try:
            _core.ModelFileReader(str(p))
        except ValueError as e:
            assert "fuzz.elut" in str(e)


def test_modelfile_is_a_context_manager(written):
    path, _, _ = written
    with read_model_file(path) as f:
        assert isinstance(f, ModelFile)
        assert f.names()[0] == "token_embd.weight"


def test_bpe_merges_are_stored_as_strings_and_load_to_the_same_tokenizer(tmp_path) -> None:
    import json

    from edgelut.models.modelfile import compact_merges
    from edgelut.tokenizer import Tokenizer, tokenizer_json_from_gguf_vocab

    tokens = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "c", "ab", "bc", "abc", "\u2581a", "\u2581ab"]
    types = [2, 3, 3] + [1] * (len(tokens) - 3)
    scores = [0.0] * 3 + [-float(i) for i in range(len(tokens) - 3)]
    text = tokenizer_json_from_gguf_vocab(
        model="llama", tokens=tokens, token_types=types, scores=scores, unk_id=0
    )
    assert all(isinstance(m, list) for m in json.loads(text)["model"]["merges"])
    model = tiny_model(vocab=len(tokens))
    model.tokenizer.tokenizer_json = text
    path = write_model_file(tmp_path / "t.elut", model.config, model.tokenizer, _quantized(model))
    stored = read_model_file(path, verify_crc=False).tokenizer.tokenizer_json
    merges = json.loads(stored)["model"]["merges"]
    assert merges and all(isinstance(m, str) and m.count(" ") == 1 for m in merges)
    sample = "abc cab ab bca a"
    assert Tokenizer(read_model_file(path).tokenizer).encode(sample) == Tokenizer(model.tokenizer).encode(
        sample
    )
    # A piece with a space would make "a b c" ambiguous: such merges stay pairs.
    doc = json.loads(text)
    doc["model"]["merges"].append(["a b", "c"])
    spaced = json.dumps(doc)
    assert compact_merges(spaced) is spaced
