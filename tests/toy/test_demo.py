from pathlib import Path

import pytest

from diffusion_notes.toy.demo import SAMPLERS, digits_demo


@pytest.mark.slow
def test_digits_demo_writes_a_figure_and_a_quality_table(tmp_path, capsys):
    result = digits_demo(tmp_path / "out", samples_per_digit=2)
    assert Path(result["figure"]).stat().st_size > 5_000
    table = result["table"]
    assert list(table) == [*SAMPLERS, "real test digits", "pure noise"]
    assert all(table[name]["n"] == 20 for name in SAMPLERS)
    assert table["real test digits"]["n"] == 360
    for name in SAMPLERS:  # even 2 samples per digit separate clearly from noise
        assert table[name]["mean_top_class_probability"] > table["pure noise"]["mean_top_class_probability"]
    printed = capsys.readouterr().out
    assert "DDPM-1000" in printed and "pure noise" in printed
