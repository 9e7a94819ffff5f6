"""Convert a Hugging Face gpt-oss checkpoint to an MLX model directory, streaming tensor by tensor.

Experts: `mxfp4` keeps the original MXFP4 values (lossless repacking); `q4` re-quantizes them to
MLX affine 4-bit (one expert at a time, reporting the error against the MXFP4 originals).
The rest stays bf16, or becomes 8-bit affine with `rest="q8"` (the router never goes below 8).
The output loads in gptoss and in `mlx_lm.load` (mlx-lm's parameter names and `quantization` block).
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint.layout import EXPERT_RE, hf_to_mlx
from ..checkpoint.mxfp4 import dequantize_mxfp4
from ..checkpoint.safetensors import (
    ShardedCheckpoint,
    ShardWriter,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
)
from ..errors import BadCheckpointError, NotEnoughDiskError, UserError
from ..fsutil import atomic_directory, free_disk_bytes, remove_stale_partials
from ..model.config import MLX, ModelConfig
from .convert_dst import COPY_FILES, NOT_WRITABLE, check_paths, may_replace, not_writable, writable

Q8 = {"group_size": 64, "bits": 8, "mode": "affine"}
# Non-expert matrices that `rest="q8"` quantizes (norms, sinks and biases stay bf16).
Q8_RE = r"(self_attn\.[qkvo]_proj|mlp\.router)\.weight$|^(lm_head|model\.embed_tokens)\.weight$"


@dataclass
class ConvertReport:
    dst: Path
    experts: str
    rest: str
    bytes_written: int = 0
    tensors: int = 0
    q4_rel_rms_error: float | None = None  # ||q4 - mxfp4|| / ||mxfp4|| over all experts
    q4_max_abs_error: float | None = None
    verify: dict[str, Any] = field(default_factory=dict)
    removed_partials: list[Path] = field(default_factory=list)  # stale ones of killed converts

    def summary(self) -> str:
        parts = [
            f"removed the partial output of an earlier, stopped convert: {p}"
            for p in self.removed_partials
        ]
        parts.append(
            f"wrote {self.dst} ({self.bytes_written / 1e9:.2f} GB, {self.tensors} tensors)"
        )
        if self.q4_rel_rms_error is not None:
            parts.append(
                f"q4 experts vs MXFP4 originals: relative RMS error {self.q4_rel_rms_error:.4f},"
                f" max abs error {self.q4_max_abs_error:.4g}"
            )
        if self.verify:
            v = self.verify
            if v.get("logits_rel_err") is not None:
                parts.append(
                    f"verified: tensors match; logits vs source rel. max error {v['logits_rel_err']:.2e},"
                    f" top-1 agreement {v['argmax_agreement']:.2f}"
                )
            else:
                parts.append(f"verified: tensors match ({v.get('note', '')})")
        return "\n".join(parts)


def _bf16(a: np.ndarray) -> tuple[np.ndarray, str]:
    return f32_to_bf16_bits(a), "BF16"


def _quantize_rows(
    w: np.ndarray, q: dict[str, Any], rows: int = 8192
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """MLX affine quantization of a float matrix, a block of rows at a time (bf16 scales/biases)."""
    import mlx.core as mx

    for start in range(0, w.shape[0], rows):
        block = mx.array(np.asarray(w[start : start + rows], dtype=np.float32)).astype(mx.bfloat16)
        wq, scales, biases = mx.quantize(
            block, group_size=q["group_size"], bits=q["bits"], mode="affine"
        )
        mx.eval(wq, scales, biases)
        yield (
            np.array(wq),
            np.array(scales.view(mx.uint16)),
            np.array(biases.view(mx.uint16)),
        )


class _Converter:
    def __init__(
        self,
        ckpt: ShardedCheckpoint,
        writer: ShardWriter,
        experts: str,
        group_size: int,
        rest: str,
        tick: Callable[[int], None],
    ):
        self.ckpt, self.writer = ckpt, writer
        self.experts, self.group_size, self.rest = experts, group_size, rest
        self.tick = tick
        self.quantized: dict[str, dict[str, Any]] = {}
        self.err_sq = 0.0
        self.ref_sq = 0.0
        self.max_abs = 0.0

    def raw(self, name: str) -> tuple[np.ndarray, str]:
        return self.ckpt.read(name), self.ckpt.info(name).dtype

    def float32(self, name: str) -> np.ndarray:
        a, dtype = self.raw(name)
        return bf16_bits_to_f32(a) if dtype == "BF16" else np.asarray(a, dtype=np.float32)

    def run(self) -> None:
        import re

        q8 = re.compile(Q8_RE)
        for name in self.ckpt:
            m = EXPERT_RE.match(name)
            nbytes = self.ckpt.info(name).nbytes
            if m is not None:
                part = m.group(3)
                if part == "blocks":
                    self.experts_unit(m.group(1), m.group(2))
                elif part == "bias":
                    a, dtype = self.raw(name)
                    for out_name, out in hf_to_mlx(name, a):
                        self.writer.add(out_name, out, dtype)
            elif self.rest == "q8" and q8.search(name):
                self.quantize_q8(name)
            else:
                a, dtype = self.raw(name)
                self.writer.add(name, a, dtype)
            self.tick(nbytes)

    def quantize_q8(self, name: str) -> None:
        w = self.float32(name)
        path = name[: -len(".weight")]
        parts = list(_quantize_rows(w, Q8))
        self.writer.add_chunks(
            f"{path}.weight", (w.shape[0], w.shape[1] * 8 // 32), "U32", (p[0] for p in parts)
        )
        self.writer.add_chunks(
            f"{path}.scales", (w.shape[0], w.shape[1] // 64), "BF16", (p[1] for p in parts)
        )
        self.writer.add_chunks(
            f"{path}.biases", (w.shape[0], w.shape[1] // 64), "BF16", (p[2] for p in parts)
        )
        self.quantized[path] = dict(Q8)

    def experts_unit(self, prefix: str, proj: str) -> None:
        blocks_name = f"{prefix}.{proj}_blocks"
        scales_name = f"{prefix}.{proj}_scales"
        blocks, _ = self.raw(blocks_name)
        scales, _ = self.raw(scales_name)
        if self.experts == "mxfp4":
            for out_name, out in hf_to_mlx(blocks_name, blocks):
                self.writer.add(out_name, out, "U32")
            for out_name, out in hf_to_mlx(scales_name, scales):
                self.writer.add(out_name, out, "U8")
            return
        # q4: re-quantize one expert at a time so memory stays at one expert's float32 matrix.
        outs = ("down_proj",) if proj == "down_proj" else ("gate_proj", "up_proj")
        for j, out in enumerate(outs):
            rows = slice(None) if proj == "down_proj" else slice(j, None, 2)
            self.requantize(f"{prefix}.{out}", blocks, scales, rows)

    def requantize(self, path: str, blocks: np.ndarray, scales: np.ndarray, rows: slice) -> None:
        import mlx.core as mx

        q = {"group_size": self.group_size, "bits": 4, "mode": "affine"}
        n_experts = blocks.shape[0]
        out_dims = len(range(*rows.indices(blocks.shape[1])))
        in_dims = blocks.shape[2] * 32
        sc: list[np.ndarray] = []
        bi: list[np.ndarray] = []

        def weights() -> Iterator[np.ndarray]:
            for e in range(n_experts):
                ref = dequantize_mxfp4(blocks[e, rows], scales[e, rows])
                wq, s, b = mx.quantize(mx.array(ref).astype(mx.bfloat16), **q)
                back = np.array(mx.dequantize(wq, s, b, **q).astype(mx.float32))
                diff = back - ref
                self.err_sq += float(np.square(diff, dtype=np.float64).sum())
                self.ref_sq += float(np.square(ref, dtype=np.float64).sum())
                self.max_abs = max(self.max_abs, float(np.abs(diff).max()))
                sc.append(np.array(s.view(mx.uint16)))
                bi.append(np.array(b.view(mx.uint16)))
                yield np.array(wq)

        groups = in_dims // self.group_size
        self.writer.add_chunks(
            f"{path}.weight", (n_experts, out_dims, in_dims // 8), "U32", weights()
        )
        self.writer.add_chunks(f"{path}.scales", (n_experts, out_dims, groups), "BF16", sc)
        self.writer.add_chunks(f"{path}.biases", (n_experts, out_dims, groups), "BF16", bi)


def output_config(
    src_config: dict[str, Any], experts: str, group_size: int, quantized: dict[str, dict]
) -> dict[str, Any]:
    cfg = dict(src_config)
    cfg.pop("quantization_config", None)
    if experts == "mxfp4":
        quant: dict[str, Any] = {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    else:
        quant = {"group_size": group_size, "bits": 4, "mode": "affine"}
    quant.update(quantized)
    cfg["quantization"] = quant
    cfg["quantization_config"] = quant  # mlx-lm writes both; older readers look for either
    return dict(sorted(cfg.items()))


def _disk_check(dst: Path, estimate: int) -> None:
    free = free_disk_bytes(dst.parent)
    if free < estimate * 1.02 + 64 * 2**20:
        raise NotEnoughDiskError(
            f"not enough disk space for {dst}: the converted model needs ~{estimate / 1e9:.1f} GB,"
            f" {free / 1e9:.1f} GB free; free some space or choose another DST"
        )


def _check_choices(experts: str, rest: str, group_size: int) -> None:
    if experts not in ("mxfp4", "q4"):
        raise UserError(f"--experts must be mxfp4 or q4, not {experts!r}")
    if rest not in ("bf16", "q8"):
        raise UserError(f"--rest must be bf16 or q8, not {rest!r}")
    if group_size not in (32, 64):
        raise UserError(f"--group-size must be 32 or 64, not {group_size}")


def _finish(
    report: ConvertReport,
    tmp: Path,
    src: Path,
    cfg: ModelConfig,
    conv: _Converter,
    files: list[Path],
    group_size: int,
) -> None:
    """Config, tokenizer files and the report's figures, once every tensor is written."""
    report.bytes_written = sum(f.stat().st_size for f in files)
    report.tensors = len(
        json.loads((tmp / "model.safetensors.index.json").read_text())["weight_map"]
    )
    cfg_out = output_config(cfg.raw, report.experts, group_size, conv.quantized)
    (tmp / "config.json").write_text(json.dumps(cfg_out, indent=2) + "\n")
    for name in COPY_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, tmp / name)
    if report.experts == "q4" and conv.ref_sq > 0:
        report.q4_rel_rms_error = (conv.err_sq / conv.ref_sq) ** 0.5
        report.q4_max_abs_error = conv.max_abs


def convert(
    src: Path | str,
    dst: Path | str,
    *,
    experts: str = "mxfp4",
    group_size: int = 32,
    rest: str = "bf16",
    force: bool = False,
    verify: bool = True,
    progress: Callable[[int, int], None] | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> ConvertReport:
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    _check_choices(experts, rest, group_size)
    cfg = ModelConfig.from_dir(src)
    if cfg.format == MLX:
        raise UserError(f"{src} is already in MLX format; load it directly (gptoss run -m {src})")
    check_paths(src, dst)
    force = may_replace(dst, force)
    report = ConvertReport(dst=dst, experts=experts, rest=rest)
    with writable(dst):
        report.removed_partials = remove_stale_partials(dst.parent)
    ckpt = ShardedCheckpoint(src)
    total = sum(ckpt.info(n).nbytes for n in ckpt)
    _disk_check(dst, total)

    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    try:
        with atomic_directory(dst, force=force) as tmp:
            writer = ShardWriter(tmp, max_shard_bytes=max_shard_bytes, metadata={"format": "mlx"})
            conv = _Converter(ckpt, writer, experts, group_size, rest, tick)
            try:
                conv.run()
                files = writer.close()
            except BaseException:
                writer.abort()
                raise
            _finish(report, tmp, src, cfg, conv, files, group_size)
            if verify:
                report.verify = verify_conversion(
                    src, tmp, lossless=(experts == "mxfp4" and rest == "bf16")
                )
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NotEnoughDiskError(
                f"disk full while writing {dst}; nothing was left behind. Free space and retry"
            ) from e
        if e.errno in NOT_WRITABLE:
            raise not_writable(dst, e) from e
        raise
    finally:
        ckpt.close()
    return report


def verify_conversion(src: Path, dst: Path, *, lossless: bool, tokens: int = 8) -> dict[str, Any]:
    """Check DST against SRC: every expert tensor re-read and compared (streamed), then, if both
    models fit in memory, logits on a few tokens."""
    from ..model.memory import available_memory

    check_tensors(src, dst, lossless=lossless)
    out: dict[str, Any] = {"tensors": "ok"}
    size = sum(f.stat().st_size for f in dst.glob("*.safetensors"))
    # One model at a time is loaded, but float32 activations double the bf16 weights.
    if available_memory().bytes < 2.5 * size:
        out["note"] = "logits check skipped: the model does not fit in memory twice"
        return out
    import mlx.core as mx

    from ..model.loader import load_model

    ids = [200006, 1428, 200008, 13225, 11, 1495, 382, 200007][:tokens]
    a_model = load_model(src, dtype="float32")
    a = np.array(a_model(mx.array([ids]))[0])
    del a_model
    b_model = load_model(dst, dtype="float32")
    b = np.array(b_model(mx.array([ids]))[0])
    del b_model
    if not np.isfinite(b).all():
        raise BadCheckpointError("verification failed: the converted model gives non-finite logits")
    rel = float(np.abs(a - b).max() / np.abs(a).max())
    agree = float((a.argmax(-1) == b.argmax(-1)).mean())
    if lossless and rel > 1e-5:
        raise BadCheckpointError(
            f"verification failed: logits differ from the source (rel. error {rel:.2e})"
        )
    out.update(logits_rel_err=rel, argmax_agreement=agree)
    return out


def check_tensors(src: Path, dst: Path, *, lossless: bool) -> None:
    """Every MXFP4 expert tensor of SRC must appear in DST: bit-identical (mxfp4) or within the
    4-bit affine error bound (q4); other tensors identical unless quantized to 8 bits."""
    import mlx.core as mx

    a, b = ShardedCheckpoint(src), ShardedCheckpoint(dst)
    cfg = json.loads((dst / "config.json").read_text())["quantization"]
    try:
        for name in a:
            m = EXPERT_RE.match(name)
            if m is None:
                if name in b and b.info(name).dtype == a.info(name).dtype:
                    if not np.array_equal(a.get_numpy(name), b.get_numpy(name)):
                        raise BadCheckpointError(
                            f"verification failed: {name} differs after conversion"
                        )
                elif f"{name[: -len('.weight')]}.scales" not in b:
                    raise BadCheckpointError(
                        f"verification failed: {name} is missing from the output"
                    )
                continue
            prefix, proj, part = m.groups()
            if part != "blocks":
                continue
            blocks, scales = a.get_numpy(name), a.get_numpy(f"{prefix}.{proj}_scales")
            outs = ("down_proj",) if proj == "down_proj" else ("gate_proj", "up_proj")
            for j, out in enumerate(outs):
                rows = slice(None) if proj == "down_proj" else slice(j, None, 2)
                w, s = b.get_numpy(f"{prefix}.{out}.weight"), b.get_numpy(f"{prefix}.{out}.scales")
                for e in (0, blocks.shape[0] - 1):  # first and last expert of every projection
                    ref = dequantize_mxfp4(blocks[e, rows], scales[e, rows])
                    if cfg.get("mode") == "mxfp4":
                        got = np.array(
                            mx.dequantize(
                                mx.array(np.array(w[e])),
                                mx.array(np.array(s[e])),
                                group_size=32,
                                bits=4,
                                mode="mxfp4",
                            ).astype(mx.float32)
                        )
                        ok = np.array_equal(got, ref)
                    else:
                        bi = b.get_numpy(f"{prefix}.{out}.biases")
                        q = {"group_size": cfg["group_size"], "bits": 4, "mode": "affine"}
                        got = np.array(
                            mx.dequantize(
                                mx.array(np.array(w[e])),
                                mx.array(np.array(s[e])).view(mx.bfloat16),
                                mx.array(np.array(bi[e])).view(mx.bfloat16),
                                **q,
                            ).astype(mx.float32)
                        )
                        # an affine 4-bit step is (max-min)/15 per group; allow one step (+bf16 slack)
                        span = np.ptp(ref.reshape(ref.shape[0], -1, q["group_size"]), axis=-1).max()
                        ok = np.abs(got - ref).max() <= span / 15 + 1e-2 * span
                    if not ok:
                        raise BadCheckpointError(
                            f"verification failed: {prefix}.{out} expert {e} does not match the source"
                        )
    finally:
        a.close()
        b.close()
