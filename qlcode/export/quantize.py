"""k-quant GGUF files (q4_k_m, q5_k_m, q6_k) made by llama.cpp's own quantizer.

The k-quants' mixes (which tensors get more bits in a _m file) are llama.cpp's, so qlcode does not
reimplement them: it writes the f16 GGUF itself (qlcode.export.gguf_export), hands it to
`llama_model_quantize` through llama-cpp-python (`pip install 'qlcode[llama-cpp]'`), and reads the
result back with the `gguf` package like any other export: metadata, every tensor, and its values
against the source weights. Tensors whose rows are not a multiple of 256 values get llama.cpp's
fallback type; the report counts the types actually written.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from qlcode.errors import QlcodeError
from qlcode.export.gguf_export import GgufReport, export_gguf, verify

# --type -> llama.cpp's llama_ftype (llama.h; the gguf package's LlamaFileType has the same numbers)
KQUANTS = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}


@dataclass
class KQuantReport(GgufReport):
    tensor_types: dict[str, int]  # GGML type name -> tensors of that type in the file


def llama_cpp_problem() -> str | None:
    """Why k-quants cannot be made on this machine, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return ("k-quants are made by llama.cpp's quantizer: pip install 'qlcode[llama-cpp]' (it builds llama.cpp, "
                "minutes), or export --type f16 or q8_0")
    return None


def export_kquant(model_dir: str | Path, out: str | Path, kind: str, threads: int = 0) -> KQuantReport:
    """model_dir (a merged model) -> an f16 GGUF beside `out` -> llama.cpp's `kind` quantization at `out`, checked."""
    import gguf

    model_dir, out = Path(model_dir), Path(out)
    if kind not in KQUANTS:
        raise QlcodeError(f"--type: the k-quants are {', '.join(KQUANTS)}, not {kind!r}")
    if (problem := llama_cpp_problem()) is not None:
        raise QlcodeError(f"--type {kind}: {problem}")
    f16 = out.with_name(f".{out.name}.f16.tmp")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        export_gguf(model_dir, f16, "f16")
        quantize(f16, tmp, kind, threads)
        report = verify(tmp, model_dir, kind)
        kinds = Counter(t.tensor_type.name for t in gguf.GGUFReader(tmp).tensors)
        tmp.replace(out)
    finally:
        f16.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return KQuantReport(str(out), kind, report.tensors, report.bytes, report.max_abs_error, dict(sorted(kinds.items())))


def quantize(source: Path, out: Path, kind: str, threads: int = 0) -> None:
    """llama.cpp's llama_model_quantize from an f16 GGUF to `kind`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = KQUANTS[kind]
    params.nthread = threads  # 0: llama.cpp uses every core
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0:
        raise QlcodeError(f"llama.cpp could not quantize {source} to {kind} (status {status}); its log above says why")
