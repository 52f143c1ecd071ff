"""Where and how computation runs: device choice, seeding and numeric precision."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import numpy as np
import torch

from nmt_cli.errors import ConfigError, NmtError


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise NmtError("device 'cuda' was asked for but no CUDA device is available; use --device "
                       "cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# CPU flags that mean native bf16 matrix multiplication (x86 AVX512-BF16 and AMX; Arm BF16).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where that file does not exist."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            flags.update(value.split())
    return flags


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively: its flags, or where there are none to read,
    torch's own probe of the instruction set (never a guess from the vendor)."""
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & BF16_CPU_FLAGS)
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def resolve_precision(precision: str, device: torch.device, key: str) -> str:
    """The precision to run at: ``auto`` is bf16 on a GPU that supports it or a CPU with native
    bf16 matmul, else fp32; an explicit choice is checked (``key`` names the setting)."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    check_precision(device, precision, key)
    return precision


def check_precision(device: torch.device, precision: str, key: str = "train.precision") -> None:
    """fp16 needs CUDA (the CPU has no fast fp16 matmuls); bf16 needs a GPU that supports it."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 needs a CUDA device; use bf16 or fp32 on the CPU", key)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16; use fp16 or fp32", key)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class LowPrecisionLinear(torch.nn.Linear):
    """An inference-only linear layer whose weight is bf16 (or fp16): the input is cast to the
    weight's type, the product runs there (fp32 accumulation inside the kernel), and the output
    comes back in fp32, where the bias is added.

    The bias is never part of the low-precision kernel: in a bf16 ``addmm`` some CPUs round the
    bias differently by a row's place in the batch, so a sentence decoded alone and in a batch
    would drift apart. The product alone gives each row the same bits whatever the batch holds.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.linear(x.to(self.weight.dtype), self.weight).float()
        return out if self.bias is None else out + self.bias


class LowPrecisionGRU(torch.nn.GRU):
    """An inference-only GRU whose products run in bf16 (or fp16), for the decoder's steps.

    The fp32 weights stay (a packed run, the encoder's, uses them as before); ``low_weights``
    gives a cast copy of each layer's input and hidden weights. On a plain batch-first
    input the layers run step by step with the products in low precision and fp32 outputs, the
    biases added in fp32 after them (see ``LowPrecisionLinear``), and the gates and the hidden
    state in fp32, with PyTorch's gate order and equations (r, z, n;
    h' = (1 - z) * n + z * h). Each row's result depends on that row alone (at hidden sizes that
    are a multiple of the CPU's vector width).
    """

    low_dtype: torch.dtype = torch.bfloat16

    def low_weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (input, hidden) weights in ``low_dtype``, cast again whenever the fp32
        weights changed (a state dict loaded after the cast, say)."""
        weights = [(getattr(self, f"weight_ih_l{i}"), getattr(self, f"weight_hh_l{i}"))
                   for i in range(self.num_layers)]
        key = (self.low_dtype, tuple((a._version, a.data_ptr(), b._version, b.data_ptr())
                                     for a, b in weights))
        if getattr(self, "_low_key", None) != key:
            self._low = [(a.detach().to(self.low_dtype), b.detach().to(self.low_dtype))
                         for a, b in weights]
            self._low_key = key
        return self._low

    def forward(self, x, hx=None):  # type: ignore[override]
        if (not isinstance(x, torch.Tensor) or x.dim() != 3 or self.bidirectional
                or not self.batch_first):
            return super().forward(x, hx)
        batch, steps, _ = x.shape
        layers, size = self.num_layers, self.hidden_size
        h_all = hx if hx is not None else x.new_zeros(layers, batch, size)
        lin = torch.nn.functional.linear
        layer_in, finals = x, []
        for i, (w_ih, w_hh) in enumerate(self.low_weights()):
            b_ih = getattr(self, f"bias_ih_l{i}", None)
            b_hh = getattr(self, f"bias_hh_l{i}", None)
            gates_in = lin(layer_in.to(w_ih.dtype), w_ih).float()  # every step at once
            if b_ih is not None:
                gates_in = gates_in + b_ih
            h, outputs = h_all[i], []
            for t in range(steps):
                gates_h = lin(h.to(w_hh.dtype), w_hh).float()
                if b_hh is not None:
                    gates_h = gates_h + b_hh
                gates = gates_in[:, t]
                # sigmoid and tanh run on fresh contiguous sums (their vectorised and scalar code
                # paths round differently, and a strided view would pick by the batch's shape)
                rz = torch.sigmoid(gates[:, :2 * size] + gates_h[:, :2 * size])
                r, z = rz[:, :size], rz[:, size:]
                n = torch.tanh(gates[:, 2 * size:] + r * gates_h[:, 2 * size:])
                h = n + z * (h - n)  # (1 - z) * n + z * h
                outputs.append(h)
            layer_in = torch.stack(outputs, dim=1)
            finals.append(h)
        return layer_in, torch.stack(finals, dim=0)


def for_decoding(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The model with every linear layer's weight in ``precision`` (a resolved choice), for
    inference only; cast once here, so no step casts a weight.

    Each ``nn.Linear`` becomes a ``LowPrecisionLinear``: its product runs in bf16 (or fp16) and
    returns fp32, and its bias stays fp32 and is added after the product. A unidirectional GRU
    (the RNN decoder's) becomes a ``LowPrecisionGRU`` on the same terms (packed runs keep the
    fp32 weights); bidirectional GRUs and LSTMs are not cast. Everything else stays fp32: the
    embeddings (an output layer tied to them gets a cast copy), layer norms, residual sums,
    attention scores and softmaxes, and the log-softmax over the vocabulary, so ``step`` returns
    fp32 log-probabilities and scores are summed in fp32.
    """
    if precision == "fp32":
        return model
    dtype = DTYPES[precision]
    for module in model.modules():
        if type(module) is torch.nn.Linear:  # not an int8 layer, not one already cast
            # a new parameter: an output layer tied to the embeddings leaves them in fp32
            module.weight = torch.nn.Parameter(module.weight.detach().to(dtype),
                                               requires_grad=False)
            module.__class__ = LowPrecisionLinear
        elif type(module) is torch.nn.GRU and not module.bidirectional and module.batch_first:
            module.__class__ = LowPrecisionGRU
            module.low_dtype = dtype
    return model


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for forward passes; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only; a disabled scaler (every call a pass-through) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
