"""``precision: auto``: bf16 only where the CPU has native bf16 and the timed probe agrees."""

import pytest

from pixellm.train.precision import (
    bf16_matmul_speedup,
    choose_cpu_precision,
    probe_bf16_speedup,
    resolve_precision,
)


def _never_probe() -> float:
    raise AssertionError("the probe must not run when the flags already rule bf16 out")


def test_avx2_only_cpu_trains_in_fp32_without_probing():
    choice = choose_cpu_precision({"avx", "avx2", "fma"}, _never_probe)
    assert choice.mixed_precision == "no" and choice.name == "fp32"
    assert "no native bf16" in choice.reason


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_native_bf16_cpu_trains_in_bf16_when_the_probe_agrees(flag):
    choice = choose_cpu_precision({"avx2", flag}, lambda: 2.3)
    assert choice.mixed_precision == "bf16"
    assert flag in choice.reason and "2.3x" in choice.reason


def test_native_flags_but_slow_probe_falls_back_to_fp32():
    # e.g. ONEDNN_MAX_CPU_ISA=AVX2 on an AVX512-BF16 machine: the kernels emulate bf16
    choice = choose_cpu_precision({"avx512_bf16"}, lambda: 0.6)
    assert choice.mixed_precision == "no" and "0.60x" in choice.reason


def test_unknown_flags_leave_the_decision_to_the_probe():
    assert choose_cpu_precision(None, lambda: 1.5).mixed_precision == "bf16"
    assert choose_cpu_precision(None, lambda: 0.1).mixed_precision == "no"


@pytest.mark.parametrize(("asked", "expected"), [("fp32", "no"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_an_explicit_precision_is_obeyed(asked, expected):
    choice = resolve_precision(asked, flags=lambda: {"avx2"}, speedup=_never_probe)
    assert choice.mixed_precision == expected and "requested" in choice.reason


def test_auto_on_this_cpu_uses_the_flags_and_probe():
    choice = resolve_precision("auto", flags=lambda: {"avx2"}, speedup=_never_probe)
    assert choice.mixed_precision == "no"
    assert resolve_precision("auto", flags=lambda: {"amx_bf16"}, speedup=lambda: 3.0).mixed_precision == "bf16"


def test_probe_returns_a_positive_ratio():
    assert bf16_matmul_speedup(size=32, repeats=1) > 0


def test_probe_stops_early_where_bf16_is_emulated_and_measures_longer_elsewhere():
    calls = []

    def measure(ratios):
        def fn(size, repeats):
            calls.append((size, repeats))
            return ratios[len(calls) - 1]
        return fn

    assert probe_bf16_speedup(measure([0.03, 9.9])) == 0.03 and calls == [(256, 3)]
    calls.clear()
    # close to 1 on the small probe: the larger, steadier one decides
    assert probe_bf16_speedup(measure([0.98, 1.9])) == 1.9 and calls == [(256, 3), (512, 5)]
