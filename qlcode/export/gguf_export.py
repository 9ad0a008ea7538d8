"""Export a model directory of any family in qlcode.families to GGUF (llama.cpp, Ollama) with the `gguf` package.

What llama.cpp needs: the architecture the family names (llama for Code Llama and DeepSeek-Coder,
qwen2, starcoder2) with its metadata (lengths, heads, norm epsilon, RoPE base, RoPE scaling), the
tokenizer (SentencePiece-style "llama" vocab with scores, or byte-level BPE "gpt2" vocab with merges
and the family's pre-tokenizer name) with bos/eos/pad and the family's infilling tokens named as
such, and the weights (and biases: Qwen2's q/k/v, StarCoder2's everywhere) under GGUF's names; for
the llama architecture the query and key projections are permuted from Hugging Face's rotate-half
layout back to Meta's interleaved one, as llama.cpp's own converter does. Tensors stream shard by shard: the header is written from the
shapes alone, then each shard is read, converted and written, so memory holds one shard.
The file is written to a temporary path, read back and verified, then renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from qlcode.data.fim import fim_ids
from qlcode.errors import QlcodeError
from qlcode.export import writing_into
from qlcode.export.merge import safetensors_shards
from qlcode.families import DEFAULT, FAMILIES, family_of_tokenizer
from qlcode.families.base import Family, Gguf
from qlcode.files import read_json

TYPES = ("f16", "q8_0")


@dataclass
class GgufReport:
    path: str
    type: str
    tensors: int
    bytes: int
    max_abs_error: float  # against the source weights, after the q/k permutation (0 for f16 means exact)


def gguf_name(hf_name: str, names: Gguf = DEFAULT.gguf) -> str:
    name = names.tensor_name(hf_name)
    if name is None:
        raise QlcodeError(f"unexpected tensor {hf_name!r} for the {names.architecture} architecture")
    return name


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Hugging Face's rotate-half q/k rows -> the interleaved pairs llama.cpp's RoPE expects."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


REQUIRED_CONFIG = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
                   "vocab_size")


def _config(model_dir: Path) -> tuple[dict, Family]:
    """config.json and the model's family (from its model_type and its tokenizer's tokens)."""
    from transformers import AutoTokenizer

    cfg = read_json(model_dir / "config.json", "export a merged model directory (qlcode merge ADAPTER --out DIR)")
    known = sorted({t for f in FAMILIES.values() for t in f.model_types})
    if cfg.get("model_type") not in known:
        raise QlcodeError(f"{model_dir}: GGUF export supports the {', '.join(known)} architectures "
                          f"({', '.join(f.title for f in FAMILIES.values())}), not {cfg.get('architectures')}")
    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise QlcodeError(f"{model_dir}: no tokenizer.json or tokenizer.model; GGUF carries the tokenizer: copy the "
                          "base's (or the adapter's) tokenizer files into the directory")
    family = family_of_tokenizer(AutoTokenizer.from_pretrained(model_dir), cfg["model_type"])
    eps = "norm_epsilon" if family.gguf.layer_norm else "rms_norm_eps"
    missing = [k for k in (*REQUIRED_CONFIG, eps) if k not in cfg]
    if missing:
        raise QlcodeError(f"{model_dir / 'config.json'}: no {', '.join(missing)}; a {cfg['model_type']} config has them "
                          "(copy config.json from the base model)")
    return cfg, family


def _open(path: Path):
    """A safetensors shard, or a clear error for a truncated or foreign file."""
    try:
        return safe_open(path, "pt")
    except (SafetensorError, OSError) as e:
        raise QlcodeError(f"{path}: not a readable safetensors file ({e}); re-create it (qlcode merge) or copy it again") from None


def _source_tensor(name: str, w: torch.Tensor, cfg: dict, family: Family) -> np.ndarray:
    w = w.float()
    if family.gguf.permute_qk and name.endswith("self_attn.q_proj.weight"):
        w = permute(w, cfg["num_attention_heads"])
    elif family.gguf.permute_qk and name.endswith("self_attn.k_proj.weight"):
        w = permute(w, cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    return w.numpy()


def _converted(data: np.ndarray, kind: str):
    """(array to write, ggml type): 1-D tensors (norms) stay F32, as llama.cpp's converter keeps them."""
    import gguf

    if data.ndim == 1:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if kind == "q8_0":
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def _token_rows(vocab, rows: int) -> tuple[list, list, list]:
    """(tokens, scores, types): one per embedding row, as llama.cpp requires (it sizes token_embd by the token list).

    Rows the tokenizer has no token for (Qwen2.5-Coder's and DeepSeek-Coder's vocab_size is padded past it:
    151936 rows for 151665 tokens, 32256 for 32022) get unused [PADn] tokens, as llama.cpp's converter writes;
    tokens past the rows (Code Llama's <FILL_ME>, 32016, a placeholder transformers splits on, never fed to the
    model) are left out.
    """
    import gguf

    tokens, scores, types = (list(x) for x in zip(*vocab.all_tokens()))
    missing = range(len(tokens), rows)
    return ([*tokens[:rows], *(f"[PAD{i}]".encode() for i in missing)], [*scores[:rows], *(-1000.0 for _ in missing)],
            [*types[:rows], *(gguf.TokenType.UNUSED for _ in missing)])


def _merge_scores(model_dir: Path, tokens: list[bytes], scores: list[float]) -> list[float]:
    """SentencePiece scores for a Llama tokenizer.json: llama.cpp's "llama" tokenizer merges the adjacent pair
    whose joined piece scores highest, so a piece scores minus the rank of the first BPE merge that makes it
    (transformers ranked the merges by the SentencePiece scores). gguf's LlamaHfVocab gives every piece
    -1000, with which llama.cpp tokenizes code unlike the model's tokenizer ("fibonacci" with "ona" where
    Code Llama has "on", "acci"). Pieces no merge makes (characters, bytes, special tokens) keep their score."""
    merges = read_json(model_dir / "tokenizer.json", "export a model directory with its tokenizer")["model"]["merges"]
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        rank.setdefault("".join(merge.split(" ") if isinstance(merge, str) else merge), r)
    return [float(-rank[t.decode()]) if t.decode() in rank else s for t, s in zip(tokens, scores)]


def _add_tokenizer(writer, model_dir: Path, family: Family, rows: int) -> None:
    import logging

    import gguf

    logging.getLogger("gguf").setLevel(logging.ERROR)  # it warns about the pair template's second <s>
    from transformers import AutoTokenizer

    try:
        vocab = gguf.vocab.LlamaHfVocab(model_dir)  # Code Llama's SentencePiece-style BPE with byte fallback
        pre = "default"
    except FileNotFoundError:
        vocab = gguf.vocab.BpeVocab(model_dir)  # byte-level BPE (the micro model, Qwen, DeepSeek-Coder, StarCoder2)
        pre = family.gguf.pre
    tokens, scores, types = _token_rows(vocab, rows)
    if vocab.tokenizer_model == "llama":
        scores = _merge_scores(model_dir, tokens, scores)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens)).add_to_gguf(writer)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = fim_ids(tok, family)
    vocab_ids = tok.get_vocab()
    token_id = lambda name: None if name is None else vocab_ids.get(name, vocab_ids.get("▁" + name))  # noqa: E731
    K = gguf.Keys.Tokenizer
    fim = family.infilling
    for key, value in ((K.FIM_PRE_ID, ids.pre), (K.FIM_SUF_ID, ids.suf), (K.FIM_MID_ID, ids.mid),
                       (K.EOT_ID, token_id(family.gguf.eot)), (K.FIM_REP_ID, token_id(fim.repo_name)),
                       (K.FIM_SEP_ID, token_id(fim.file_sep))):
        if value is not None:
            writer.add_uint32(key, value)


def export_gguf(model_dir: str | Path, out: str | Path, kind: str = "f16") -> GgufReport:
    model_dir, out = Path(model_dir), Path(out)
    if kind not in TYPES:
        raise QlcodeError(f"--type is one of {', '.join(TYPES)}, not {kind!r}")
    cfg, family = _config(model_dir)
    shards = safetensors_shards(model_dir)
    if not out.parent.is_dir():
        raise QlcodeError(f"--out: the folder {out.parent} does not exist; create it or choose another path")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with writing_into(out.parent):
            return _write(model_dir, out, tmp, kind, cfg, family, shards)
    finally:
        tmp.unlink(missing_ok=True)  # nothing half-written is left, whatever failed


def _write(model_dir: Path, out: Path, tmp: Path, kind: str, cfg: dict, family: Family, shards: list[str]) -> GgufReport:
    import gguf

    names = family.gguf
    writer = gguf.GGUFWriter(tmp, names.architecture)
    writer.add_name(model_dir.name)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {"rope_theta": cfg.get("rope_theta", 10000.0)}
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    if names.layer_norm:
        writer.add_layer_norm_eps(cfg["norm_epsilon"])
    else:
        writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(rope["rope_theta"])
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if kind == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    _add_tokenizer(writer, model_dir, family, cfg["vocab_size"])

    # pass 1: shapes only, for the header
    order: list[tuple[str, str]] = []
    for shard in shards:
        with _open(model_dir / shard) as f:
            for name in sorted(f.keys()):
                shape = f.get_slice(name).get_shape()
                data, qtype = _converted(np.zeros(shape, dtype=np.float32), kind)
                writer.add_tensor_info(gguf_name(name, names), data.shape, data.dtype, data.nbytes, raw_dtype=qtype)
                order.append((shard, name))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    # pass 2: the data, one shard in memory at a time
    for shard in shards:
        with _open(model_dir / shard) as f:
            for s, name in order:
                if s == shard:
                    writer.write_tensor_data(_converted(_source_tensor(name, f.get_tensor(name), cfg, family), kind)[0])
    writer.close()
    report = verify(tmp, model_dir, kind)
    tmp.replace(out)
    report.path = str(out)
    return report


def verify(path: Path, model_dir: Path, kind: str) -> GgufReport:
    """Read the file back: metadata, every tensor's name, shape and type, and its values against the source."""
    import gguf

    cfg, family = _config(model_dir)
    arch = family.gguf.architecture
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    expect = {"general.architecture": arch, f"{arch}.block_count": cfg["num_hidden_layers"],
              f"{arch}.embedding_length": cfg["hidden_size"], f"{arch}.context_length": cfg["max_position_embeddings"]}
    for key, value in expect.items():
        if field(key) != value:
            raise QlcodeError(f"GGUF check failed: {key} is {field(key)!r}, expected {value!r}")
    if (n := len(reader.fields["tokenizer.ggml.tokens"].data)) != cfg["vocab_size"]:  # llama.cpp would refuse the file
        raise QlcodeError(f"GGUF check failed: {n} tokens for {cfg['vocab_size']} embedding rows")
    tensors = {t.name: t for t in reader.tensors}
    worst, total = 0.0, 0
    for shard in safetensors_shards(model_dir):
        with _open(model_dir / shard) as f:
            for name in f.keys():
                t = tensors.get(gguf_name(name, family.gguf))
                src = _source_tensor(name, f.get_tensor(name), cfg, family)
                if t is None:
                    raise QlcodeError(f"GGUF check failed: {gguf_name(name, family.gguf)} is missing")
                got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(src.shape)
                if kind == "f16" and src.ndim == 2:
                    src = src.astype(np.float16).astype(np.float32)
                worst = max(worst, float(np.abs(got.astype(np.float32) - src).max()))
                total += int(t.n_bytes)
    return GgufReport(str(path), kind, len(tensors), total, worst)
