"""Where and how computation runs: device choice, seeding and numeric precision."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from nmt_cli.errors import ConfigError, NmtError
from nmt_cli.ids import PAD_ID


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


# The widest slice of input features one low-precision product takes. The CPU's bf16 kernels split
# a longer reduction into blocks whose size follows the row count, so a row would round
# differently alone and in a batch; products over at most this many features give each row the
# same bits whatever the batch holds, and wider layers sum such products in fp32, in order.
LOW_PRECISION_BLOCK = 256

# Low-precision decoding pads the source to a multiple of this width: softmaxes and weighted sums
# over the source then see whole vectors of the CPU's width, and padding adds exact zeros, so a
# sentence gets the same bits alone and in a batch of longer ones.
LOW_PRECISION_WIDTH = 16


# torch hands a bf16 product to oneDNN only when its sizes (batch x rows x inner x columns)
# multiply to more than 16^3, and runs smaller ones in another kernel that rounds differently; a
# sentence alone (one row, a short source) would then get other bits than in a batch. Products
# at or under twice that are padded with zero rows, so that every product runs in oneDNN.
SMALL_PRODUCT = 2 * 16 ** 3


# Low-precision products take their rows in multiples of this many, zero rows added: the CPU's
# bf16 library compiles a kernel for every new product shape (about 2 ms each on a 2-core Xeon),
# and decoding, whose batches shrink a row at a time as sentences finish, would otherwise meet a
# new shape at almost every step. Each row's result depends on that row alone.
LOW_PRECISION_ROWS = 8


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``n``."""
    return -(-n // multiple) * multiple


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros((rows - x.size(0),) + tuple(x.shape[1:]))])


def low_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(a, b)`` for low-precision a (N, ..., m, k) and b (N, ..., k, n) with the same
    leading sizes, in the same kernel at every size (see ``SMALL_PRODUCT``)."""
    size = a.numel() * b.size(-1)
    if size > SMALL_PRODUCT or size == 0:
        return torch.matmul(a, b)
    rows = a.size(0)
    need = SMALL_PRODUCT // (size // rows) + 1
    return torch.matmul(_pad_rows(a, need), _pad_rows(b, need))[:rows]


def low_weighted_sum(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention's weighted sum ``probs @ values`` for fp32 probs (..., m, S) and low-precision
    values (..., S, d) -> fp32 (..., m, d), with S a multiple of ``LOW_PRECISION_WIDTH``: one
    low-precision product per block of that many positions, the blocks' results added in fp32
    in order. The kernels split a longer sum by its length, so one product over a source padded
    further (a sentence in a batch of longer ones) would round differently; block by block,
    padding only adds exact zeros at the end."""
    width = LOW_PRECISION_WIDTH
    blocks = probs.size(-1) // width
    p = probs.to(values.dtype).unflatten(-1, (blocks, width)).movedim(-2, -3)  # (.., C, m, W)
    parts = low_matmul(p, values.unflatten(-2, (blocks, width)))  # (..., C, m, d)
    out = parts.select(-3, 0).float()
    for c in range(1, blocks):
        out += parts.select(-3, c)
    return out


def column_blocks(weight: torch.Tensor, dtype: torch.dtype) -> "torch.Tensor | list[torch.Tensor]":
    """``weight`` (out, in) cast to ``dtype``, cut along its inputs into blocks of at most
    ``LOW_PRECISION_BLOCK`` columns: one tensor (blocks, out, block) when they are all as wide
    (``low_product`` then runs them as one batched product), else a list of contiguous blocks."""
    w = weight.detach().to(dtype)
    width = LOW_PRECISION_BLOCK
    if w.size(1) % width == 0 or w.size(1) < width:
        width = min(width, w.size(1))
        return w.view(w.size(0), -1, width).transpose(0, 1).contiguous()
    return [w[:, i:i + width].contiguous() for i in range(0, w.size(1), width)]


def low_product(x: torch.Tensor, blocks: "torch.Tensor | list[torch.Tensor]",
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` with ``W`` given as its ``column_blocks``: each block's product runs
    in their low precision, and the fp32 result is the fp32 bias (if any) and their sum, taken in
    order (the bias added after the first block's product is widened to fp32)."""
    x = x.to(blocks[0].dtype)
    rows = x.numel() // x.size(-1)
    need = rows_for(rows, blocks[-1].size(1) * blocks[0].size(0))  # the last block is the least
    if need != rows:
        flat = x.reshape(rows, x.size(-1))
        out = low_product(_pad_rows(flat, need), blocks, bias)[:rows]
        return out.view(*x.shape[:-1], out.size(-1))
    lin = torch.nn.functional.linear
    if len(blocks) == 1:
        parts = [lin(x, blocks[0])]
    elif isinstance(blocks, torch.Tensor):  # equal blocks: one batched product, one kernel call
        n, width = blocks.size(0), blocks.size(2)
        parts = torch.bmm(x.reshape(rows, n, width).transpose(0, 1), blocks.transpose(1, 2))
    else:  # every block but the last is LOW_PRECISION_BLOCK wide (column_blocks)
        b = LOW_PRECISION_BLOCK
        parts = [lin(x[..., i * b:(i + 1) * b], w) for i, w in enumerate(blocks)]
    # widened, then the bias added in place (one pass fewer than a mixed-type add, the same
    # bits), then the other blocks in order
    out = parts[0].float()
    if bias is not None:
        out.add_(bias)
    for part in parts[1:]:
        out.add_(part.view_as(out))
    return out.view(*x.shape[:-1], out.size(-1))


def rows_for(rows: int, row_product: int) -> int:
    """The rows a low-precision product of ``rows`` rows runs with, each row costing
    ``row_product`` multiply-adds: at least enough for more than ``SMALL_PRODUCT`` in all (see
    there), in multiples of ``LOW_PRECISION_ROWS``."""
    need = rows
    if rows * row_product <= SMALL_PRODUCT:
        need = SMALL_PRODUCT // row_product + 1
    return round_up(need, LOW_PRECISION_ROWS)


def _cached(module: torch.nn.Module, name: str, tensors: list[torch.Tensor], make):
    """``make()``, computed again only when one of ``tensors`` changed (a state dict loaded after
    the cast, say); kept on ``module`` under ``name``."""
    key = [(t._version, t.data_ptr(), t.dtype) for t in tensors]
    state = module.__dict__.get(name)  # (key, value), read without nn.Module's __getattr__
    if state is None or state[0] != key:
        state = module.__dict__[name] = (key, make())
    return state[1]


class LowPrecisionLinear(torch.nn.Linear):
    """An inference-only linear layer whose weight is bf16 (or fp16): the input is cast to the
    weight's type, the product runs there (fp32 accumulation inside the kernel, over blocks of at
    most ``LOW_PRECISION_BLOCK`` inputs), and the output comes back in fp32, where the bias is
    added.

    The bias is never part of the low-precision kernel: in a bf16 ``addmm`` some CPUs round the
    bias differently by a row's place in the batch, so a sentence decoded alone and in a batch
    would drift apart. The product alone gives each row the same bits whatever the batch holds.
    """

    def blocks(self) -> list[torch.Tensor]:
        return _cached(self, "_blocks", [self.weight],
                       lambda: column_blocks(self.weight, self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return low_product(x, self.blocks(), self.bias)


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x (B, S, F) with each row's first ``lengths[b]`` positions reversed and its padding left
    in place (its own inverse)."""
    steps = torch.arange(x.size(1), device=x.device).unsqueeze(0)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.size(2)))


class LowPrecisionGRU(torch.nn.GRU):
    """An inference-only GRU whose products run in bf16 (or fp16).

    The fp32 weights stay (a packed run uses them as before); ``low_weights`` gives each
    layer's and direction's input and hidden weights as cast ``column_blocks``. A plain
    batch-first input (the decoder's steps) and ``forward_padded`` (the encoder's padded
    sentences, in both directions) run step by step with the products in low precision and fp32
    outputs, the biases added in fp32 after them (see ``LowPrecisionLinear``), and the gates and
    the hidden state in fp32, with PyTorch's gate order and equations (r, z, n;
    h' = (1 - z) * n + z * h). Each row's result depends on that row alone (at hidden sizes that
    are a multiple of the CPU's vector width).
    """

    low_dtype: torch.dtype = torch.bfloat16

    def _suffixes(self) -> list[str]:
        dirs = ["", "_reverse"] if self.bidirectional else [""]
        return [f"l{i}{d}" for i in range(self.num_layers) for d in dirs]

    def low_weights(self) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """For each layer (and direction, reverse after forward) its (input, hidden) weights as
        ``column_blocks`` in ``low_dtype``."""
        names = self._suffixes()
        weights = [getattr(self, f"weight_{kind}_{n}") for n in names for kind in ("ih", "hh")]
        return _cached(self, "_low", weights, lambda: [
            (column_blocks(getattr(self, f"weight_ih_{n}"), self.low_dtype),
             column_blocks(getattr(self, f"weight_hh_{n}"), self.low_dtype)) for n in names])

    def _run(self, x: torch.Tensor, h: torch.Tensor, index: int) -> torch.Tensor:
        """One layer in one direction over x (B, T, F) from h (B, H) -> outputs (B, T, H)."""
        size, name = self.hidden_size, self._suffixes()[index]
        w_ih, w_hh = self.low_weights()[index]
        b_ih = getattr(self, f"bias_ih_{name}", None)
        b_hh = getattr(self, f"bias_hh_{name}", None)
        gates_in = low_product(x, w_ih, b_ih)  # every step at once
        outputs = []
        for t in range(x.size(1)):
            gates_h = low_product(h, w_hh, b_hh)
            gates = gates_in[:, t]
            # sigmoid and tanh run on fresh contiguous sums (their vectorised and scalar code
            # paths round differently, and a strided view would pick by the batch's shape)
            rz = torch.sigmoid(gates[:, :2 * size] + gates_h[:, :2 * size])
            r, z = rz[:, :size], rz[:, size:]
            n = torch.tanh(gates[:, 2 * size:] + r * gates_h[:, 2 * size:])
            h = n + z * (h - n)  # (1 - z) * n + z * h
            outputs.append(h)
        return torch.stack(outputs, dim=1)

    def forward(self, x, hx=None):  # type: ignore[override]
        if (not isinstance(x, torch.Tensor) or x.dim() != 3 or self.bidirectional
                or not self.batch_first):
            return super().forward(x, hx)
        h_all = hx if hx is not None else x.new_zeros(self.num_layers, x.size(0), self.hidden_size)
        layer_in, finals = x, []
        for i in range(self.num_layers):
            layer_in = self._run(layer_in, h_all[i], i)
            finals.append(layer_in[:, -1])
        return layer_in, torch.stack(finals, dim=0)

    def forward_padded(self, x: torch.Tensor,
                       lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded batch-first sentences x (B, S, F) of ``lengths`` (B,) -> outputs (B, S, dirs * H),
        zero on padding, and final states (layers * dirs, B, H), as a packed run gives them.

        Each row runs over all S positions; a forward pass reads its padding only after its last
        word, and the reverse direction runs forward over each row reversed within its length,
        so no row's result depends on the others' lengths."""
        batch, steps = x.size(0), x.size(1)
        dirs = 2 if self.bidirectional else 1
        last = (lengths.to(x.device) - 1).clamp(min=0)
        rows = torch.arange(batch, device=x.device)
        keep = (torch.arange(steps, device=x.device).unsqueeze(0)
                < lengths.to(x.device).unsqueeze(1)).unsqueeze(2)
        layer_in, finals = x, []
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                h0 = x.new_zeros(batch, self.hidden_size)
                if d == 0:
                    out = self._run(layer_in, h0, layer * dirs)
                    finals.append(out[rows, last])
                else:
                    out = reverse_within(self._run(reverse_within(layer_in, lengths), h0,
                                                   layer * dirs + 1), lengths)
                    finals.append(out[:, 0])
                outs.append(out)
            layer_in = (torch.cat(outs, dim=2) if dirs > 1 else outs[0]) * keep
        return layer_in, torch.stack(finals, dim=0)


def settle_vector_math() -> None:
    """Run tanh and erf once on a throwaway tensor. On a 2-core Xeon, the first call of either in
    a process now and then (about 1 run in 12) rounded the part of its output that a second
    thread computed differently from every later call with the same input, which would make a
    sentence's bits depend on whether its batch came first. Later calls agree."""
    x = torch.linspace(-4.0, 4.0, 1 << 15)
    torch.tanh(x)
    torch.erf(x)


def for_decoding(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The model with every linear layer's weight in ``precision`` (a resolved choice), for
    inference only; cast once here, so no step casts a weight.

    Each ``nn.Linear`` becomes a ``LowPrecisionLinear``: its product runs in bf16 (or fp16) and
    returns fp32, and its bias stays fp32 and is added after the product. A batch-first GRU
    becomes a ``LowPrecisionGRU`` on the same terms (the RNN decoder's steps, and the encoder's
    sentences through ``forward_padded``; packed runs keep the fp32 weights); LSTMs are not
    cast. The model gets ``low_precision`` (the dtype; None at fp32), which tells it to pad
    sources to a multiple of ``LOW_PRECISION_WIDTH`` and to run attention products in that
    dtype. Everything else stays fp32: the embeddings (an output layer tied to them gets a cast
    copy), layer norms, residual sums, softmaxes, and the log-softmax over the vocabulary, so
    ``step`` returns fp32 log-probabilities and scores are summed in fp32.
    """
    if precision == "fp32":
        return model
    dtype = DTYPES[precision]
    settle_vector_math()
    for module in model.modules():
        if type(module) is torch.nn.Linear:  # not an int8 layer, not one already cast
            # a new parameter: an output layer tied to the embeddings leaves them in fp32
            module.weight = torch.nn.Parameter(module.weight.detach().to(dtype),
                                               requires_grad=False)
            module.__class__ = LowPrecisionLinear
        elif type(module) is torch.nn.GRU and module.batch_first:
            module.__class__ = LowPrecisionGRU
            module.low_dtype = dtype
    model.low_precision = dtype
    return model


def low_precision_of(model: torch.nn.Module) -> Optional[torch.dtype]:
    """The dtype ``for_decoding`` gave ``model``'s products, or None (fp32, or training)."""
    return None if model.training else getattr(model, "low_precision", None)


def pad_source(src: torch.Tensor, low: Optional[torch.dtype]) -> torch.Tensor:
    """src (B, S) padded on the right to a multiple of ``LOW_PRECISION_WIDTH`` in low-precision
    decoding (``low`` a dtype); unchanged otherwise."""
    extra = round_up(src.size(1), LOW_PRECISION_WIDTH) - src.size(1) if low is not None else 0
    return torch.nn.functional.pad(src, (0, extra), value=PAD_ID) if extra else src


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
