"""Frozen passes on the fastest runtime: a fixed ``images -> features`` module run by OpenVINO or
ONNX Runtime on the CPU, exported once per weights and input size and cached on disk.

A frozen pass is any forward pass whose module does not change while it runs: advise's stage
features, the exact heads' and the large cells' cached features, ``predict`` and ``evaluate``.
On this project's CPUs these runtimes ran Lite0 2.7-3.7x (ONNX Runtime) and 3.6-5x (OpenVINO)
faster than torch eager at equal features (``bench/runtimes.py``). On a GPU the pass stays on
torch.

Choosing: ``TLKIT_RUNTIME`` (or ``--runtime`` on tlkit's commands) is ``auto`` (OpenVINO when it
is installed, else ONNX Runtime, else torch), ``torch``, ``onnxruntime`` or ``openvino``.

Never stale: the export is keyed by a hash of the module's weights, recomputed whenever any of
its tensors was replaced or modified in place (torch's version counters), and by the input size
and the torch version. Never wrong: every export is checked against torch on mirrored copies
of the first images, and the runtime is dropped for this pass (one line says so) if they
differ beyond a tolerance.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlkit.data.features import tensor_digest
from tlkit.errors import TlkitError, unknown_name
from tlkit.utils import atomic_path, rank_zero_print

__all__ = [
    "RUNTIMES",
    "FrozenPass",
    "available_runtimes",
    "runtime_cache_dir",
    "selected_runtime",
]

#: What ``TLKIT_RUNTIME`` may name.
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
#: Largest difference from torch accepted, relative to the largest torch feature (at least 1).
TOLERANCE = 1e-3
_OPSET = 17
#: A pass over fewer pixels than this (images x height x width; 42 images at 224 px, 512 at
#: 64 px) stays on torch when its size is known: exporting costs more than it saves.
MIN_PIXELS = 2**21
_CHECK_IMAGES = 2


def available_runtimes() -> list[str]:
    """The runtimes importable here, fastest first, ``torch`` last (each needs ``onnx`` too,
    which the export writes with)."""
    found = []
    for name in ("openvino", "onnxruntime"):
        try:
            __import__("onnx")
            __import__(name)
            found.append(name)
        except ImportError:
            continue
    return [*found, "torch"]


def selected_runtime(requested: str | None = None) -> str:
    """The runtime a frozen CPU pass uses: ``requested``, else ``$TLKIT_RUNTIME``, else ``auto``.

    Raises:
        TlkitError: For an unknown name, or a runtime asked for by name that is not installed.
    """
    name = (requested or os.environ.get("TLKIT_RUNTIME") or "auto").strip().lower()
    if name not in RUNTIMES:
        raise unknown_name("runtime", name, RUNTIMES)
    found = available_runtimes()
    if name == "auto":
        return found[0]
    if name not in found:
        raise TlkitError(f"runtime {name} is not installed: pip install {name}, or `runtime=auto`")
    return name


def runtime_cache_dir() -> Path:
    """``$TLKIT_CACHE_DIR/runtimes`` or ``~/.cache/tlkit/runtimes``: the exported models."""
    root = os.environ.get("TLKIT_CACHE_DIR") or Path.home() / ".cache" / "tlkit"
    return Path(root) / "runtimes"


def _versions(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """Identity and in-place version of every tensor: changes whenever the weights may have."""
    return tuple((id(t), t._version) for t in module.state_dict(keep_vars=True).values())


class FrozenPass:
    """``images -> features`` of a fixed module, on the selected runtime when the images are on
    the CPU and torch otherwise.

    Args:
        module: Computes the features (put in eval mode for every call); its weights must not
            change between calls unless through its tensors (any change is detected).
        name: What the module computes (backbone and stage), part of the export's key.
        runtime: ``auto``, ``torch``, ``onnxruntime`` or ``openvino`` (``None``: the
            environment's choice, see :func:`selected_runtime`).
    """

    def __init__(self, module: nn.Module, name: str, runtime: str | None = None) -> None:
        self.module = module
        self.name = name
        self.runtime = selected_runtime(runtime)
        self._versions: tuple | None = None
        self._digest = ""
        #: Images the coming pass will read, when the caller knows (see :data:`MIN_PIXELS`).
        self.planned: int | None = None
        self._sessions: dict[tuple[int, ...], Callable[[np.ndarray], np.ndarray] | None] = {}

    def __getstate__(self) -> dict:
        """Copies and pickles keep the module, not the loaded runtime sessions."""
        return {**self.__dict__, "_versions": None, "_digest": "", "_sessions": {}}

    @property
    def digest(self) -> str:
        """Hash of the module's current weights (recomputed only when a tensor changed)."""
        versions = _versions(self.module)
        if versions != self._versions:
            self._versions, self._digest = versions, tensor_digest(self.module)
            self._sessions.clear()
        return self._digest

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.module.eval()
        if self.runtime == "torch" or images.device.type != "cpu" or len(images) == 0:
            return self.module(images)
        digest = self.digest
        shape = tuple(images.shape[1:])
        if shape not in self._sessions:
            small = self.planned is not None and self.planned * shape[-1] * shape[-2] < MIN_PIXELS
            self._sessions[shape] = None if small else self._open(images, digest)
        session = self._sessions[shape]
        if session is None:
            return self.module(images)
        return torch.from_numpy(session(images.float().contiguous().numpy()))

    def _open(self, images: torch.Tensor, digest: str) -> Callable[[np.ndarray], np.ndarray] | None:
        """Export (or reuse the export), load it on the runtime and check it against torch;
        ``None`` when any step fails (the pass stays on torch).

        The check reads mirrored copies of the images the export was traced on, in a batch of
        another length: a trace that froze its input into a constant, or a fixed batch size,
        fails it."""
        sample = images[:1].float().contiguous()
        check = torch.cat([sample, images[:_CHECK_IMAGES].float()]).flip(-1).contiguous()
        try:
            path = self._export(sample, digest)
            session = _load(self.runtime, path)
            got = torch.from_numpy(session(check.numpy()))
        except Exception as err:  # an unexportable model still runs, on torch
            rank_zero_print(f"frozen pass on torch ({self.runtime} failed: {_first_line(err)})")
            return None
        want = self.module(check).float()
        gap = float((got - want).abs().max())
        if got.shape != want.shape or gap > TOLERANCE * max(1.0, float(want.abs().max())):
            rank_zero_print(
                f"frozen pass on torch ({self.runtime} differs from torch by {gap:.2g})"
            )
            return None
        return session

    def _export(self, sample: torch.Tensor, digest: str) -> Path:
        shape = "x".join(str(n) for n in sample.shape[1:])
        key = f"{self.name}|{digest}|{shape}|torch {torch.__version__}|opset {_OPSET}"
        path = runtime_cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.onnx"
        if path.is_file():
            return path
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
            torch.onnx.export(
                self.module,
                (sample,),
                str(tmp),
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                opset_version=_OPSET,
                dynamo=False,
            )
        return path


def _load(runtime: str, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the ONNX model at ``path`` on ``runtime`` with torch's thread count."""
    threads = torch.get_num_threads()
    if runtime == "openvino":
        import openvino

        compiled = openvino.Core().compile_model(
            str(path),
            "CPU",
            {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"},
        )
        request = compiled.create_infer_request()
        return lambda x: np.array(request.infer([x])[compiled.output(0)], copy=True)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x})[0]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__
