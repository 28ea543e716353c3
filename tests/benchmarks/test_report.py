from benchmarks import report


def test_update_replaces_only_its_section(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "DOC", tmp_path / "benchmarks.md")
    report.update_benchmarks_doc("A", "first a")
    report.update_benchmarks_doc("B", "only b")
    report.update_benchmarks_doc("A", "second a")
    text = (tmp_path / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks")
    assert "second a" in text and "first a" not in text and "only b" in text
    assert text.count("## A") == 1 and text.index("## A") < text.index("## B")


def test_machine_description_names_cores():
    assert "cores" in report.machine_description()
