"""MXFP4 codec, safetensors I/O, and the random checkpoint's fidelity to openai/gpt-oss-20b."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from safetensors import safe_open

from gptoss_mlx.checkpoint.mxfp4 import FP4_VALUES, dequantize_mxfp4, quantize_mxfp4
from gptoss_mlx.checkpoint.safetensors import (
    SafetensorsFile,
    ShardedCheckpoint,
    ShardWriter,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
    save_file,
)
from gptoss_mlx.errors import BadCheckpointError
from gptoss_mlx.harmony.tokenizer import Tokenizer
from scripts.make_checkpoint import PRESETS, make_config

# ----------------------------------------------------------------------------- MXFP4


def _all_bytes_blocks() -> np.ndarray:
    """Every byte value once, each in a group whose other bytes are 0x77 (6, 6): amax stays 6."""
    blocks = np.full((256, 16), 0x77, dtype=np.uint8)
    blocks[:, 3] = np.arange(256)
    return blocks


def test_nibble_order_low_first():
    blocks = np.zeros((1, 16), dtype=np.uint8)
    blocks[0, 0] = 0x21  # low nibble 1 (0.5), high nibble 2 (1.0)
    blocks[0, 1] = 0xF9  # low nibble 9 (-0.5), high nibble 15 (-6)
    out = dequantize_mxfp4(blocks, np.array([127 + 1], dtype=np.uint8))
    assert out[:4].tolist() == [1.0, 2.0, -1.0, -12.0]


@pytest.mark.parametrize("scale", [0, 1, 100, 127, 150, 252])
def test_every_byte_round_trips(scale):
    blocks = _all_bytes_blocks()
    scales = np.full(256, scale, dtype=np.uint8)
    values = dequantize_mxfp4(blocks, scales)
    pairs = values.reshape(256, 16, 2)[:, 3] / np.float32(2.0 ** (scale - 127))
    assert np.array_equal(pairs[:, 0], FP4_VALUES[np.arange(256) & 15])
    assert np.array_equal(pairs[:, 1], FP4_VALUES[np.arange(256) >> 4])
    assert np.array_equal(np.signbit(pairs[:, 0]), np.arange(256) & 8 > 0)  # -0 stays -0
    b, s = quantize_mxfp4(values)
    assert np.array_equal(s, scales) and np.array_equal(b, blocks)


def test_quantize_picks_the_ocp_scale_and_the_nearest_value():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 256)).astype(np.float32) * np.exp(rng.normal(0, 3, (64, 1)))
    blocks, scales = quantize_mxfp4(w)
    groups = w.reshape(64, 8, 32)
    amax = np.abs(groups).max(-1).astype(np.float64)
    assert np.array_equal(scales, np.floor(np.log2(amax)).astype(int) - 2 + 127)
    grid = FP4_VALUES[None, None, :] * np.exp2(scales.astype(np.float64) - 127)[..., None]
    best = np.abs(groups[..., None] - grid[:, :, None, :]).min(-1)
    dq = dequantize_mxfp4(blocks, scales).reshape(64, 8, 32)
    ours = np.abs(groups.astype(np.float64) - dq)
    assert np.array_equal(ours, best)


def test_ties_round_to_even_and_large_values_saturate():
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.5]
    w = np.zeros(32, dtype=np.float32)
    w[: len(ties)] = ties
    w[16 : 16 + len(ties)] = -np.array(ties)
    blocks, scales = quantize_mxfp4(w)
    assert scales.tolist() == [127]  # amax 7.5 -> floor(log2) 2 -> exponent 0
    out = dequantize_mxfp4(blocks, scales)
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0]
    assert out[: len(ties)].tolist() == expected
    assert out[16 : 16 + len(ties)].tolist() == [-x for x in expected]


def test_zero_and_tiny_blocks():
    w = np.zeros((3, 32), dtype=np.float32)
    w[1] = 1e-40  # subnormal: the exponent clamps at E8M0's minimum
    blocks, scales = quantize_mxfp4(w)
    assert scales.ravel().tolist() == [0, 0, 0]
    assert np.array_equal(dequantize_mxfp4(blocks, scales)[0], w[0])


def test_matches_mlx_dequantize_as_mlx_lm_reads_hf_blocks():
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, (3, 255, 6, 16), dtype=np.uint8)
    scales = np.broadcast_to(np.arange(255, dtype=np.uint8)[None, :, None], (3, 255, 6)).copy()
    w = mx.array(blocks).view(mx.uint32).flatten(-2)
    ref = mx.dequantize(w, mx.array(scales), group_size=32, bits=4, mode="mxfp4", dtype=mx.float32)
    assert np.array_equal(np.array(ref), dequantize_mxfp4(blocks, scales))


# ----------------------------------------------------------------------------- safetensors


def test_bf16_conversion_rounds_like_torch():
    rng = np.random.default_rng(2)
    x = np.concatenate(
        [
            rng.standard_normal(10000).astype(np.float32) * 100,
            np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, 1e-45], np.float32),
            np.array([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF], np.uint32).view(np.float32),
        ]
    )
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(f32_to_bf16_bits(x), ref)
    assert np.isnan(bf16_bits_to_f32(f32_to_bf16_bits(np.array([np.nan], np.float32))))[0]
    assert np.array_equal(bf16_bits_to_f32(ref), torch.from_numpy(x).to(torch.bfloat16).float())


def _sample_tensors() -> dict[str, tuple[np.ndarray, str]]:
    rng = np.random.default_rng(3)
    return {
        "f32": (rng.standard_normal((3, 5)).astype(np.float32), "F32"),
        "bf16": (f32_to_bf16_bits(rng.standard_normal((4, 6)).astype(np.float32)), "BF16"),
        "u8": (rng.integers(0, 256, (7, 3), dtype=np.uint8), "U8"),
        "u32": (rng.integers(0, 2**32, (2, 3), dtype=np.uint32), "U32"),
        "scalar": (np.array(1.5, dtype=np.float32), "F32"),
        "empty": (np.zeros((0, 4), dtype=np.float32), "F32"),
    }


def _torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype == torch.uint32:
        return t.view(torch.int32).numpy().view(np.uint32)
    return t.numpy()


def _mlx_to_numpy(a: mx.array) -> np.ndarray:
    return np.array(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a)


def test_shard_writer_output_loads_identically_everywhere(tmp_path):
    tensors = _sample_tensors()
    with ShardWriter(tmp_path, max_shard_bytes=64, metadata={"format": "mlx"}) as w:
        for name, (array, dtype) in tensors.items():
            w.add(name, array, "BF16" if dtype == "BF16" else None)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    n = len(files)
    assert n > 1 and files == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    assert set(index["weight_map"].values()) == set(files)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a, _ in tensors.values())
    assert not list(tmp_path.glob(".*"))  # no temporary files left

    ckpt = ShardedCheckpoint(tmp_path)
    assert set(ckpt) == set(tensors)
    for name, (array, dtype) in tensors.items():
        shard, info = ckpt[name]
        assert info == (dtype, array.shape, array.nbytes)
        ours = ckpt.get_numpy(name)
        assert np.array_equal(ours, array) and ours.dtype == array.dtype
        if ours.size:
            assert not ours.flags.writeable and not ours.flags.owndata  # a view of the map
        assert shard.metadata == {"format": "mlx"}
        with safe_open(shard.path, framework="pt") as f:
            assert np.array_equal(_torch_to_numpy(f.get_tensor(name)), array)
        assert np.array_equal(_mlx_to_numpy(mx.load(str(shard.path))[name]), array)


def test_big_headers_and_streamed_tensors(tmp_path):
    w = ShardWriter(tmp_path, max_shard_bytes=1 << 20, zero_based=True)
    names = [f"model.layers.{i}.a.rather.long.tensor.name.weight" for i in range(200)]
    for i, name in enumerate(names):
        w.add(name, np.full(3, i, dtype=np.int32))
    w.add_chunks("streamed", (4, 3), "F32", [np.ones((1, 3)), np.zeros((3, 3))])
    assert [p.name for p in w.close()] == ["model-00000-of-00000.safetensors"]
    with safe_open(tmp_path / "model-00000-of-00000.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert f.get_tensor(names[150]).tolist() == [150] * 3
        assert f.get_tensor("streamed").sum().item() == 3
    with pytest.raises(ValueError, match="bytes"):
        ShardWriter(tmp_path / "x").add_chunks("t", (2,), "F32", [np.ones(3)])


def _write_one(path: Path) -> None:
    save_file(path, {"a": np.arange(10, dtype=np.float32), "b": np.ones((2, 2), np.uint8)})


def test_corrupt_files_give_one_clear_line(tmp_path):
    good = tmp_path / "good.safetensors"
    _write_one(good)
    with safe_open(good, framework="pt") as f:
        assert f.get_tensor("a").tolist() == list(range(10))
    data = good.read_bytes()
    cases = {
        "truncated": data[:-3],
        "tiny": data[:5],
        "header_too_big": struct.pack("<Q", len(data)) + data[8:],
        "bad_json": data[:8] + b"{" + b"x" * (len(data) - 9),
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(BadCheckpointError) as err:
            SafetensorsFile(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_sharded_checkpoint_names_missing_and_truncated_shards(tmp_path):
    with ShardWriter(tmp_path, max_shard_bytes=16) as w:
        w.add("a", np.arange(8, dtype=np.float32))
        w.add("b", np.arange(8, dtype=np.float32))
    second = tmp_path / "model-00002-of-00002.safetensors"
    second.write_bytes(second.read_bytes()[:-1])
    with pytest.raises(BadCheckpointError, match="model-00002-of-00002.safetensors is truncated"):
        ShardedCheckpoint(tmp_path)
    second.unlink()
    with pytest.raises(
        BadCheckpointError, match="shard model-00002-of-00002.safetensors .*missing"
    ):
        ShardedCheckpoint(tmp_path)
    single = tmp_path / "single"
    single.mkdir()
    _write_one(single / "model.safetensors")
    assert sorted(ShardedCheckpoint(single)) == ["a", "b"]
    with pytest.raises(BadCheckpointError, match="no model.safetensors"):
        ShardedCheckpoint(tmp_path / "nothing")


# ----------------------------------------------------------------------------- the checkpoint


def _expected_shapes(cfg: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    h, d, e, i = (
        cfg[k] for k in ("hidden_size", "head_dim", "num_local_experts", "intermediate_size")
    )
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    v = cfg["vocab_size"]
    out = {
        "model.embed_tokens.weight": ("BF16", (v, h)),
        "lm_head.weight": ("BF16", (v, h)),
        "model.norm.weight": ("BF16", (h,)),
    }
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out |= {
            p + "input_layernorm.weight": ("BF16", (h,)),
            p + "post_attention_layernorm.weight": ("BF16", (h,)),
            p + "self_attn.q_proj.weight": ("BF16", (q, h)),
            p + "self_attn.q_proj.bias": ("BF16", (q,)),
            p + "self_attn.k_proj.weight": ("BF16", (kv, h)),
            p + "self_attn.k_proj.bias": ("BF16", (kv,)),
            p + "self_attn.v_proj.weight": ("BF16", (kv, h)),
            p + "self_attn.v_proj.bias": ("BF16", (kv,)),
            p + "self_attn.o_proj.weight": ("BF16", (h, q)),
            p + "self_attn.o_proj.bias": ("BF16", (h,)),
            p + "self_attn.sinks": ("BF16", (cfg["num_attention_heads"],)),
            p + "mlp.router.weight": ("BF16", (e, h)),
            p + "mlp.router.bias": ("BF16", (e,)),
            p + "mlp.experts.gate_up_proj_blocks": ("U8", (e, 2 * i, h // 32, 16)),
            p + "mlp.experts.gate_up_proj_scales": ("U8", (e, 2 * i, h // 32)),
            p + "mlp.experts.gate_up_proj_bias": ("BF16", (e, 2 * i)),
            p + "mlp.experts.down_proj_blocks": ("U8", (e, h, i // 32, 16)),
            p + "mlp.experts.down_proj_scales": ("U8", (e, h, i // 32)),
            p + "mlp.experts.down_proj_bias": ("BF16", (e, h)),
        }
    return out


def test_layout_matches_the_hub_repo(tiny_checkpoint):
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg == make_config("tiny")
    assert cfg["layer_types"] == ["sliding_attention", "full_attention"] * 2
    assert cfg["sliding_window"] == 8 and cfg["vocab_size"] == 201088
    ckpt = ShardedCheckpoint(tiny_checkpoint)
    expected = _expected_shapes(cfg)
    assert {n: (ckpt.info(n).dtype, ckpt.info(n).shape) for n in ckpt} == expected
    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(ckpt.info(n).nbytes for n in ckpt)
    shards = sorted(p.name for p in tiny_checkpoint.glob("*.safetensors"))
    n = len(shards)
    assert n >= 2 and shards == [f"model-{k:05d}-of-{n - 1:05d}.safetensors" for k in range(n)]
    assert sorted(set(index["weight_map"].values())) == shards
    for shard in ckpt.files.values():
        assert shard.metadata == {"format": "pt"}
    scales = ckpt.get_numpy("model.layers.0.mlp.experts.gate_up_proj_scales")
    assert len(np.unique(scales)) >= 4  # per-row gains spread the block exponents
    gen = json.loads((tiny_checkpoint / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [200002, 199999, 200012] and gen["bos_token_id"] == 199998
    tok_cfg = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tok_cfg["bos_token"], tok_cfg["eos_token"], tok_cfg["pad_token"]) == (
        "<|startoftext|>",
        "<|return|>",
        "<|endoftext|>",
    )
    assert len(tok_cfg["added_tokens_decoder"]) == 1090


def test_20b_preset_has_the_real_widths():
    cfg = make_config("20b", num_layers=24)
    real = {
        "hidden_size": 2880,
        "head_dim": 64,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "intermediate_size": 2880,
        "num_local_experts": 32,
        "num_experts_per_tok": 4,
        "experts_per_token": 4,
        "sliding_window": 128,
        "num_hidden_layers": 24,
    }
    assert {k: cfg[k] for k in real} == real
    assert len(cfg["layer_types"]) == 24 and PRESETS["20b"]["num_hidden_layers"] == 4


@pytest.fixture(scope="module")
def hf_model(tiny_checkpoint):
    import transformers

    transformers.logging.set_verbosity_error()
    model, info = transformers.GptOssForCausalLM.from_pretrained(
        tiny_checkpoint,
        quantization_config=transformers.Mxfp4Config(dequantize=True),
        output_loading_info=True,
    )
    return model, info


def test_transformers_tokenizer_encodes_like_ours(tiny_checkpoint):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_checkpoint)
    ours = Tokenizer.from_dir(tiny_checkpoint)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (199998, 200002, 199999)
    text = "Hello, world! 日本語 🤗 it's 12345\r\n  x <|start|>"
    assert hf.encode(text, add_special_tokens=False) == ours.encode(text, allow_special=True)
    assert hf.decode(ours.encode(text)) == text


def test_transformers_loads_it_and_dequantizes_our_bytes(tiny_checkpoint, hf_model):
    model, info = hf_model
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    state = model.state_dict()
    ckpt = ShardedCheckpoint(tiny_checkpoint)
    for layer in range(model.config.num_hidden_layers):
        for proj in ("gate_up_proj", "down_proj"):
            name = f"model.layers.{layer}.mlp.experts.{proj}"
            ours = dequantize_mxfp4(
                ckpt.get_numpy(name + "_blocks"), ckpt.get_numpy(name + "_scales")
            )
            assert np.array_equal(state[name].float().numpy(), ours.transpose(0, 2, 1))
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.3.self_attn.sinks"):
        assert np.array_equal(state[name].float().numpy(), bf16_bits_to_f32(ckpt.get_numpy(name)))


def test_random_weights_give_varied_logits_and_routing(tiny_checkpoint, hf_model):
    model, _ = hf_model
    ids = Tokenizer.from_dir(tiny_checkpoint).encode("The quick brown fox jumps over the lazy dog.")
    assert len(ids) > model.config.sliding_window
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_router_logits=True)
    logits = out.logits[0].float()
    assert torch.isfinite(logits).all()
    assert 0.5 < logits.std(-1).mean() < 10
    assert len(set(logits.argmax(-1).tolist())) > len(ids) // 2
    for router in out.router_logits:
        chosen = {tuple(sorted(r)) for r in router.topk(4, -1).indices.tolist()}
        assert len(chosen) > 2


def test_refuses_to_replace_a_folder_that_is_not_a_checkpoint(tmp_path):
    from scripts.make_checkpoint import make_checkpoint

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        make_checkpoint(tmp_path, preset="tiny")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_script_cli_help():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "scripts/make_checkpoint.py", "--help"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"--preset \{20b,tiny,tiny64\}", out) and "--layers" in out
