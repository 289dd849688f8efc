"""The machine facts a benchmark prints: the CPU generation and its inference vector units."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.metrics.resources import INFERENCE_CPU_FLAGS, cpu_features_text, machine_description


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads /proc/cpuinfo (Linux)")
def test_the_machine_says_its_cpu_generation_and_vector_units() -> None:
    machine = machine_description()
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert machine["cpu_features"] == [flag for flag in INFERENCE_CPU_FLAGS if flag in flags]
    if "cpu family" in Path("/proc/cpuinfo").read_text():
        assert "(family " in machine["cpu"]


def test_the_vector_units_read_as_one_phrase() -> None:
    assert cpu_features_text({"cpu_features": ["avx2", "avx512_bf16"]}) == " with AVX2 AVX512_BF16"
    assert cpu_features_text({"cpu_features": []}) == " with no AVX2"
    assert cpu_features_text({}) == ""
