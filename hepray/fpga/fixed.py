"""``ap_fixed<W,I,Q,O>`` in numpy: parse the type strings hls4ml and conifer use, and quantize
arrays exactly as the Xilinx ``ap_fixed`` headers do.

Why a numpy model of the type at all: the precision scan needs the grid (LSB, range) to build
its candidates, the BDT conversion must place thresholds and leaf values on the grid itself
(see :mod:`hepray.fpga.bdt`), and quantization-aware training (:mod:`hepray.fpga.qat`) must round
and saturate exactly like the firmware will, or the trained model is not the model that runs.

Semantics (Vivado HLS UG902 "Arbitrary precision fixed-point data types"): the value is an
integer ``k`` times ``2**-(W-I)``; ``I`` counts the sign bit for signed types. Quantization
modes act on the bits dropped below the LSB, overflow modes on the bits above the MSB.
Defaults are ``AP_TRN`` (floor) and ``AP_WRAP`` (two's-complement wrap-around).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

ROUNDING = ("AP_TRN", "AP_TRN_ZERO", "AP_RND", "AP_RND_ZERO", "AP_RND_MIN_INF", "AP_RND_INF", "AP_RND_CONV")
OVERFLOW = ("AP_WRAP", "AP_SAT", "AP_SAT_ZERO", "AP_SAT_SYM")

_TYPE = re.compile(r"^\s*(ap_)?(u?fixed|u?int)\s*<\s*([^>]*)>\s*$")


@dataclasses.dataclass(frozen=True)
class FixedType:
    """One fixed-point type. ``str(t)`` gives the C++ spelling hls4ml and conifer accept."""

    width: int
    integer: int
    signed: bool = True
    rounding: str = "AP_TRN"
    overflow: str = "AP_WRAP"

    def __post_init__(self):
        if self.width < 1 or self.width > 64:
            raise ValueError(f"fixed-point width must be 1..64, got {self.width}")
        if self.rounding not in ROUNDING:
            raise ValueError(f"unknown rounding mode {self.rounding!r}; one of {', '.join(ROUNDING)}")
        if self.overflow not in OVERFLOW:
            raise ValueError(f"unknown overflow mode {self.overflow!r}; one of {', '.join(OVERFLOW)}")

    # -- spelling --------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str | FixedType) -> FixedType:
        """``ap_fixed<16,6>``, ``fixed<16,6,RND,SAT>``, ``ap_ufixed<8,3>``, ``ap_int<8>``."""
        if isinstance(text, FixedType):
            return text
        m = _TYPE.match(str(text))
        if not m:
            raise ValueError(f"not a fixed-point type: {text!r} (expected e.g. 'ap_fixed<16,6>')")
        kind, args = m.group(2), [a.strip() for a in m.group(3).split(",") if a.strip()]
        signed = not kind.startswith("u")
        try:
            if kind.endswith("int"):
                if len(args) != 1:
                    raise ValueError
                width = int(args[0])
                return cls(width, width, signed)
            width, integer = int(args[0]), int(args[1])
        except (ValueError, IndexError):
            raise ValueError(f"not a fixed-point type: {text!r} (expected e.g. 'ap_fixed<16,6>')") from None
        rounding = _mode(args[2], ROUNDING) if len(args) > 2 else "AP_TRN"
        overflow = _mode(args[3], OVERFLOW) if len(args) > 3 else "AP_WRAP"
        return cls(width, integer, signed, rounding, overflow)

    def __str__(self) -> str:
        name = "ap_fixed" if self.signed else "ap_ufixed"
        extra = ""
        if self.rounding != "AP_TRN" or self.overflow != "AP_WRAP":
            extra = f",{self.rounding}" + (f",{self.overflow}" if self.overflow != "AP_WRAP" else "")
        return f"{name}<{self.width},{self.integer}{extra}>"

    def with_modes(self, rounding: str | None = None, overflow: str | None = None) -> FixedType:
        return dataclasses.replace(self, rounding=rounding or self.rounding, overflow=overflow or self.overflow)

    # -- grid --------------------------------------------------------------------------------
    @property
    def fractional(self) -> int:
        return self.width - self.integer

    @property
    def lsb(self) -> float:
        return float(2.0 ** -self.fractional)

    @property
    def min(self) -> float:
        return -(2.0 ** (self.integer - 1)) if self.signed else 0.0

    @property
    def max(self) -> float:
        top = 2.0 ** (self.integer - 1) if self.signed else 2.0 ** self.integer
        return top - self.lsb

    def quantize(self, x) -> np.ndarray:
        """Values as the C++ type would hold them after ``(T) x``, returned as float64."""
        k = _round(np.asarray(x, dtype=np.float64) / self.lsb, self.rounding)
        return _overflow(k, self).astype(np.float64) * self.lsb

    def ceil(self, x) -> np.ndarray:
        """Smallest representable value >= x (saturating): the grid threshold that reproduces
        ``x < t`` exactly for every representable input (see :mod:`hepray.fpga.bdt`)."""
        k = np.ceil(np.asarray(x, dtype=np.float64) / self.lsb)
        return np.clip(k * self.lsb, self.min, self.max)

    def representable(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        k = x / self.lsb
        return (k == np.round(k)) & (x >= self.min) & (x <= self.max)


def _mode(text: str, allowed: tuple[str, ...]) -> str:
    t = text.strip().upper()
    if not t.startswith("AP_"):
        t = "AP_" + t
    if t not in allowed:
        raise ValueError(f"unknown mode {text!r}; one of {', '.join(allowed)}")
    return t


def _round(k: np.ndarray, mode: str) -> np.ndarray:
    if mode == "AP_TRN":
        return np.floor(k)
    if mode == "AP_TRN_ZERO":
        return np.trunc(k)
    if mode == "AP_RND":  # half towards +inf
        return np.floor(k + 0.5)
    if mode == "AP_RND_ZERO":  # half towards zero
        return np.sign(k) * np.ceil(np.abs(k) - 0.5)
    if mode == "AP_RND_MIN_INF":  # half towards -inf
        return np.ceil(k - 0.5)
    if mode == "AP_RND_INF":  # half away from zero
        return np.sign(k) * np.floor(np.abs(k) + 0.5)
    return np.rint(k)  # AP_RND_CONV: half to even


def _overflow(k: np.ndarray, t: FixedType) -> np.ndarray:
    lo, hi = t.min / t.lsb, t.max / t.lsb
    if t.overflow == "AP_SAT":
        return np.clip(k, lo, hi)
    if t.overflow == "AP_SAT_SYM":
        return np.clip(k, -hi if t.signed else 0, hi)
    if t.overflow == "AP_SAT_ZERO":
        return np.where((k < lo) | (k > hi), 0.0, k)
    span = 2.0 ** t.width  # AP_WRAP: keep the low W bits, two's complement
    return np.mod(k - lo, span) + lo


def grid(widths, integers, rounding: str = "AP_TRN", overflow: str = "AP_WRAP") -> list[FixedType]:
    """Every ``ap_fixed<W,I>`` of a scan grid, smallest width first."""
    out = [FixedType(int(w), int(i), True, rounding, overflow) for w in widths for i in integers if 0 < int(i) < int(w)]
    return sorted(set(out), key=lambda t: (t.width, t.integer))
