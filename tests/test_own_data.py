"""Training and evaluating on a user's own file: their column names, CSV/JSONL/Parquet, no split."""

import csv
import json

import pytest

from streamscore.training.data import Columns, DataError, read_labelled
from tests.conftest import cli, last_json, small_clinc_rows

SPLIT_COUNT = {"train": 0.8, "val": 0.1, "test": 0.1}


def _own_rows(n_labels: int = 6) -> list[dict]:
    """CLINC150 rows as a ticket export has them: other column names, no split, an extra column."""
    rows = [r for r in small_clinc_rows(n_labels, seed=3) if r["label"] != "oos"]
    return [
        {"ticket": i, "body": r["text"], "category": r["label"], "channel": "email"}
        for i, r in enumerate(rows)
    ]


def _write(path, rows):
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_own_columns_without_a_split_get_a_stratified_split(tmp_path, suffix):
    rows = _own_rows()
    data = read_labelled(_write(tmp_path / f"tickets{suffix}", rows), Columns(text="body", label="category"))
    assert data.split_made and "stratified" in data.split_made
    assert [r.text for r in data.rows] == [r["body"] for r in rows]
    for label in {r["category"] for r in rows}:
        mine = [r for r in data.rows if r.label == label]
        for split, share in SPLIT_COUNT.items():
            assert abs(sum(r.split == split for r in mine) - share * len(mine)) <= 1, (label, split)
    again = read_labelled(tmp_path / f"tickets{suffix}", Columns(text="body", label="category"))
    assert [r.split for r in again.rows] == [r.split for r in data.rows], "the same split every time"


def test_a_missing_column_lists_the_columns_found(tmp_path):
    path = _write(tmp_path / "tickets.csv", _own_rows())
    with pytest.raises(
        DataError,
        match=r"no column 'text' \(its columns: 'ticket', 'body', 'category', 'channel'\).*--field text=",
    ):
        read_labelled(path)
    with pytest.raises(DataError, match="no column 'label'.*--field label="):
        read_labelled(path, Columns(text="body"))


def test_train_and_evaluate_on_own_csv_through_the_cli(tmp_path):
    rows = _own_rows()[::3]  # 50 rows a label: enough to split
    data = _write(tmp_path / "tickets.csv", rows)
    registry = tmp_path / "registry"
    trained = cli(
        "train", "--data", str(data), "--field", "text=body", "--label-field", "category",
        "--finetune-epochs", "0", "--registry", str(registry), timeout=600,
    )  # fmt: skip
    assert "made a stratified split" in trained.stdout + trained.stderr
    manifest = json.loads(next((registry / "models").glob("v*/manifest.json")).read_text())
    assert manifest["training_data"]["columns"] == {"text": "body", "label": "category", "split": "split"}
    proc = cli(
        "evaluate", "--data", str(data), "--text-field", "body", "--field", "label=category",
        "--registry", str(registry), "--json", timeout=600,
    )  # fmt: skip
    metrics = last_json(proc)
    n_test = sum(r.split == "test" for r in read_labelled(data, Columns("body", "category")).rows)
    assert metrics["n"] == n_test and metrics["split"] == "test" and "stratified" in metrics["split_made"]
    assert metrics["accuracy"] > 0.8
    assert manifest["training_data"]["rows_train"] + manifest["training_data"]["rows_val"] + n_test == len(
        rows
    )


@pytest.mark.parametrize(
    "args, says",
    [
        (["--data", "{dir}"], "is a directory: give one data file"),
        (["--data", "{csv}"], "no column 'text' (its columns: 'ticket', 'body', 'category', 'channel')"),
        (["--data", "{csv}", "--field", "body"], "--field 'body': expected FIELD=COLUMN"),
    ],
)
def test_a_data_file_it_cannot_use_is_one_line_and_exit_code_2(tmp_path, args, says):
    csv_path = _write(tmp_path / "tickets.csv", _own_rows(2))
    args = [a.format(dir=tmp_path, csv=csv_path) for a in args]
    proc = cli("train", *args, "--registry", str(tmp_path / "r"), check=False, timeout=120)
    assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[
        -2000:
    ]


def test_a_failure_while_running_exits_1_not_2(tmp_path):
    """A model on disk that does not load is a failure (1); a version that is not there is an
    argument that cannot work (2, with the versions there are: tests/test_cli.py)."""
    (tmp_path / "models" / "v0009").mkdir(parents=True)  # a version folder without its files
    proc = cli("models", "promote", "v0009", "--registry", str(tmp_path), check=False, timeout=60)
    assert proc.returncode == 1 and "v0009" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "manifest.json is missing" in proc.stderr
