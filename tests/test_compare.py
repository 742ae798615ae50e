"""The quickstart's closing table: one row per method, seeds averaged from results.json."""
import json

from trainers.analysis.compare import comparison_rows, main


def test_rows_average_each_methods_seeds_and_name_empty_folders(tmp_path, capsys):
    for seed, accuracy in ((1, 80.0), (2, 90.0)):
        folder = tmp_path / "coop" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"metrics": {"accuracy": accuracy}}))
    rows = comparison_rows([f"CoOp={tmp_path / 'coop'}", f"Zero-shot={tmp_path / 'none'}"])
    assert rows[0] == ["CoOp", "2", "85.00 ± 5.00"]
    assert rows[1][:2] == ["Zero-shot", "0"] and "no results.json" in rows[1][2]
    assert main([f"CoOp={tmp_path / 'coop'}"]) == 0
    assert "85.00 ± 5.00" in capsys.readouterr().out
