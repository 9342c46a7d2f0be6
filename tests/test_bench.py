def test_bench_writes_ratios(tmp_path):
    from flowrl.bench import main

    main(["--batch", "2", "--repeats", "1", "--out", str(tmp_path)])
    text = (tmp_path / "results.md").read_text()
    assert "forward vs patch 4" in text and "1.00x" in text  # patch 4 is its own baseline
    assert "% of it in model forwards" in text
    assert (tmp_path / "results.csv").read_text().count("\n") == 3  # header + 2 rows
