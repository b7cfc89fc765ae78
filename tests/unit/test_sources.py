"""Readers: the real format samples in ../shared/data plus small hand-written files for the generic paths."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import zipfile
from pathlib import Path

import polars as pl
import pytest

from hpcl4sr.data.sources import READERS, RawLog, read_source
from hpcl4sr.errors import UserError

SCHEMA = {"user": pl.String, "item": pl.String, "category": pl.String, "time": pl.Int64, "order": pl.Int64}


def _collect(log: RawLog) -> pl.DataFrame:
    frame = log.interactions.collect()
    assert dict(frame.schema) == SCHEMA
    return frame


def _counts(frame: pl.DataFrame) -> tuple[int, int, int, int]:
    return frame.height, frame["user"].n_unique(), frame["item"].n_unique(), frame["category"].n_unique()


def _days(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- real samples


def test_tafeng_full_file(shared_data: Path) -> None:
    log = read_source("tafeng", [shared_data / "tafeng" / "ta_feng_all_months_merged.csv.gz"])
    frame = _collect(log)
    assert _counts(frame) == (817_741, 32_266, 23_812, 2_012)
    assert frame["order"].to_list() == list(range(frame.height))
    first = frame.row(0, named=True)
    assert first == {
        "user": "01104905",  # leading zero kept
        "item": "4710199010372",
        "category": "110411",
        "time": 11262,  # 11/1/2000
        "order": 0,
    }
    assert frame["time"].min() == _days(dt.date(2000, 11, 1))
    assert frame["time"].max() == _days(dt.date(2001, 2, 28))
    features = log.user_features
    assert features is not None
    assert features.columns == ["user", "AGE_GROUP", "PIN_CODE"]
    assert features.height == 32_266 and features["user"].is_unique().all()
    assert features.filter(pl.col("user") == "01104905").row(0) == ("01104905", "45-49", "115")
    assert features["AGE_GROUP"].null_count() > 0  # 22,362 rows have it empty; blanks become null
    assert (features["AGE_GROUP"] != "").all()


TAFENG_HEADER = (
    '"TRANSACTION_DT","CUSTOMER_ID","AGE_GROUP","PIN_CODE","PRODUCT_SUBCLASS","PRODUCT_ID","AMOUNT","ASSET",'
    '"SALES_PRICE"\r\n'
)
TAFENG_ROWS = [
    '"11/1/2000","00001","","115","100","0042","1","2","3"\r\n',
    '"2/28/2001","00001","30-34","","200","0043","1","2","3"\r\n',
    '"12/31/2000","00002","<25","221","100","0042","1","2","3"\r\n',
]


def _tafeng_bytes(rows: list[str]) -> bytes:
    return "\ufeff".encode() + (TAFENG_HEADER + "".join(rows)).encode()


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".zip"])
def test_tafeng_compressions_and_first_non_null_profile(tmp_path: Path, suffix: str) -> None:
    data = _tafeng_bytes(TAFENG_ROWS)
    path = tmp_path / f"ta_feng{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("ta_feng_all_months_merged.csv", data)
    else:
        path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    log = read_source("tafeng", [path])
    frame = _collect(log)
    assert frame["time"].to_list() == [11262, _days(dt.date(2001, 2, 28)), _days(dt.date(2000, 12, 31))]
    assert frame["user"].to_list() == ["00001", "00001", "00002"]
    assert frame["item"].to_list() == ["0042", "0043", "0042"]
    assert log.user_features is not None
    assert log.user_features.rows() == [("00001", "30-34", "115"), ("00002", "<25", "221")]


def test_tafeng_bad_date_names_line_and_column(tmp_path: Path) -> None:
    rows = [*TAFENG_ROWS[:2], TAFENG_ROWS[2].replace("12/31/2000", "2000-12-31")]
    path = tmp_path / "ta_feng.csv"
    path.write_bytes(_tafeng_bytes(rows))
    with pytest.raises(UserError, match=r"ta_feng\.csv line 4, column 'TRANSACTION_DT': expected a date"):
        read_source("tafeng", [path])


def test_tafeng_wrong_file_names_missing_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.csv", "a,b\n1,2\n")
    with pytest.raises(UserError, match=r"x\.csv: missing column 'TRANSACTION_DT' \(found: a, b\)"):
        read_source("tafeng", [path])


def test_tmall_sample_purchases_and_all(shared_data: Path) -> None:
    path = shared_data / "tmall-ijcai15-sample" / "user_log_format1_head10000.csv"
    purchases = _collect(read_source("tmall", [path]))
    assert purchases.height == 672 and purchases["user"].n_unique() == 62
    everything = _collect(read_source("tmall", [path], {"action_type": "all"}))
    assert everything.height == 10_000 and everything["user"].n_unique() == 62
    assert everything["order"].to_list() == list(range(10_000))
    # purchases keep their file position, so they remain a subset of the full log's (order -> row) mapping
    assert purchases.join(everything, on="order").filter(pl.col("item") != pl.col("item_right")).height == 0
    assert everything.row(0) == ("328862", "323294", "833", 829, 0)
    assert purchases["order"].is_sorted() and purchases["order"].min() > 0
    assert _collect(read_source("tmall", [path], {"action_type": "0,2"})).height > 672


def test_tmall_user_info_to_string_profile(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n")
    with log.open("a") as handle:
        handle.write("7,1,10,1,1,1111,2\n8,2,11,1,1,511,2\n")
    info = _write(tmp_path / "info.csv", "user_id,age_range,gender\n7,3,1\n8,,NaN\n")
    result = read_source("tmall", [log, info])
    assert _collect(result)["time"].to_list() == [1111, 511]
    assert result.user_features is not None
    assert result.user_features.rows() == [("7", "3", "1"), ("8", None, None)]
    assert dict(result.user_features.schema) == {
        "user": pl.String,
        "age_range": pl.String,
        "gender": pl.String,
    }


def test_taobao_sample_behaviours(shared_data: Path) -> None:
    path = shared_data / "taobao-userbehavior-sample" / "UserBehavior_slice10000.csv"
    everything = _collect(read_source("taobao", [path], {"behavior": "all"}))
    assert everything.height == 10_000 and everything["user"].n_unique() == 114
    assert everything.row(0) == ("999477", "2200475", "3607361", 1511848894, 0)
    buys = _collect(read_source("taobao", [path], {"behavior": "buy"}))
    assert buys.height == 206 and buys["user"].n_unique() == 74
    views = _collect(read_source("taobao", [path]))
    carts = _collect(read_source("taobao", [path], {"behavior": "buy,cart"}))
    assert 206 < carts.height < 10_000 - views.height
    with pytest.raises(UserError, match=r"option behavior: unknown value 'purchase'.*pv, buy, cart, fav"):
        read_source("taobao", [path], {"behavior": "purchase"})


def test_sequences_amazon_beauty(shared_data: Path) -> None:
    folder = shared_data / "amazon-beauty"
    frame = _collect(read_source("sequences", [folder / "Beauty.txt", folder / "item_categories.tsv"]))
    assert _counts(frame) == (198_502, 22_363, 12_101, 230)
    assert frame["order"].to_list() == list(range(frame.height))
    first_user = frame.filter(pl.col("user") == "1")
    assert first_user["item"].to_list() == ["1", "2", "3", "4", "5"]  # line 1 is "1 1 2 3 4 5"
    assert first_user["time"].to_list() == [0, 1, 2, 3, 4]
    assert first_user["category"][0] == "Nail Polish"


def test_sequences_comma_table_custom_columns_and_missing_item(tmp_path: Path) -> None:
    sequences = _write(tmp_path / "seq.txt", "a x y\n\nb  y\tz x\n")
    table = _write(tmp_path / "cats.csv", "id,cat\nx,C1\ny,C2\nz,C1\n")
    frame = _collect(
        read_source("sequences", [sequences, table], {"item_column": "id", "category_column": "cat"})
    )
    assert frame.rows() == [
        ("a", "x", "C1", 0, 0),
        ("a", "y", "C2", 1, 1),
        ("b", "y", "C2", 0, 2),
        ("b", "z", "C1", 1, 3),
        ("b", "x", "C1", 2, 4),
    ]
    with pytest.raises(UserError, match=r"cats\.csv: missing column 'item_id' .*pass --item-column"):
        read_source("sequences", [sequences, table])
    short = _write(tmp_path / "short.csv", "id,cat\nx,C1\ny,C2\n")
    with pytest.raises(UserError, match=r"seq\.txt line 3: item 'z' has no category in .*short\.csv"):
        read_source("sequences", [sequences, short], {"item_column": "id", "category_column": "cat"})


# ----------------------------------------------------------------------------------------------------- amazon


def test_amazon_category_level(tmp_path: Path) -> None:
    ratings = _write(tmp_path / "ratings.csv", "A1,u1,5.0,100\nA2,u1,4.0,90\nA3,u2,3.0,100\nA4,u2,1.0,50\n")
    meta = [
        {"asin": "A1", "title": "t", "category": ["Clothing", "Women", "Dresses", "Casual"]},
        {"asin": "A2", "category": ["Clothing", "Men"]},
        {"asin": "A3", "category": []},
        {"asin": "A1", "category": ["Duplicate"]},
    ]
    meta_path = _write(tmp_path / "meta.json", "".join(json.dumps(m) + "\n" for m in meta))
    frame = _collect(read_source("amazon", [ratings, meta_path]))
    assert frame.rows() == [
        ("u1", "A1", "Dresses", 100, 0),
        ("u1", "A2", "Men", 90, 1),  # shorter list: its last entry
        ("u2", "A3", "unknown", 100, 2),  # empty list
        ("u2", "A4", "unknown", 50, 3),  # no metadata
    ]
    top = _collect(read_source("amazon", [ratings, meta_path], {"category_level": "0"}))
    assert top["category"].to_list() == ["Clothing", "Clothing", "unknown", "unknown"]
    with pytest.raises(UserError, match="category_level: expected an integer >= 0, got 'deep'"):
        read_source("amazon", [ratings, meta_path], {"category_level": "deep"})


# --------------------------------------------------------------------------------------------- csv / parquet


def test_csv_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "log.csv", "user,item,category,time,order\n007,10,c,5,x\n8,11,c,5,y\n007,12,d,3,z\n"
    )
    frame = _collect(read_source("csv", [path]))
    assert frame.rows() == [("007", "10", "c", 5, 0), ("8", "11", "c", 5, 1), ("007", "12", "d", 3, 2)]


def test_csv_custom_columns_and_separator(tmp_path: Path) -> None:
    path = _write(tmp_path / "log.tsv", "who\tproduct\tkind\tts\n1\tp\tk\t100\n")
    options = {
        "user_col": "who",
        "item_col": "product",
        "category_col": "kind",
        "time_col": "ts",
        "sep": "\\t",
    }
    assert _collect(read_source("csv", [path], options)).rows() == [("1", "p", "k", 100, 0)]


def test_csv_missing_column_message(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.csv", "user,product,category,time\n1,2,3,4\n")
    with pytest.raises(UserError) as caught:
        read_source("csv", [path])
    assert str(caught.value) == (
        f"{path}: missing column 'item' (found: user, product, category, time); pass --item-col to name it"
    )


def test_csv_bad_time_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "log.csv", "user,item,category,time\n1,2,3,4\n1,2,3,abc\n")
    with pytest.raises(UserError) as caught:
        read_source("csv", [path])
    assert str(caught.value) == f"{path} line 3, column 'time': expected an integer, got 'abc'"
    empty = _write(tmp_path / "empty_id.csv", "user,item,category,time\n1,2,3,4\n,2,3,5\n")
    with pytest.raises(
        UserError, match=r"line 3, column 'user': expected a non-empty value, got an empty value"
    ):
        read_source("csv", [empty])


def test_parquet_types_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pl.DataFrame({"u": [1, 2], "item": [10, 11], "category": ["a", "b"], "when": [7.0, 3.0]}).write_parquet(
        path
    )
    frame = _collect(read_source("parquet", [path], {"user_col": "u", "time_col": "when"}))
    assert frame.rows() == [("1", "10", "a", 7, 0), ("2", "11", "b", 3, 1)]
    stamps = tmp_path / "stamps.parquet"
    when = [dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 2)]
    pl.DataFrame(
        {"user": ["a", "b"], "item": ["x", "y"], "category": ["c", "c"], "time": when}
    ).write_parquet(stamps)
    assert _collect(read_source("parquet", [stamps]))["time"].to_list() == [1577836800, 1577923200]
    fractional = tmp_path / "bad.parquet"
    pl.DataFrame(
        {"user": ["a", "b"], "item": ["x", "y"], "category": ["c", "c"], "time": [1.0, 2.5]}
    ).write_parquet(fractional)
    with pytest.raises(UserError, match=r"bad\.parquet row 2, column 'time': expected an integer, got '2.5'"):
        read_source("parquet", [fractional])


# ----------------------------------------------------------------------------------------- read_source itself


def test_read_source_argument_errors(tmp_path: Path) -> None:
    assert set(READERS) == {"tafeng", "tmall", "amazon", "taobao", "sequences", "csv", "parquet"}
    with pytest.raises(UserError, match="unknown source 'kaggle'; expected one of: tafeng, tmall"):
        read_source("kaggle", [tmp_path / "x.csv"])
    with pytest.raises(UserError, match=r"unknown option 'item_column' \(accepted: user_col, item_col"):
        read_source("csv", [tmp_path / "x.csv"], {"item_column": "x"})
    with pytest.raises(UserError, match="source 'amazon' expects 2 raw file"):
        read_source("amazon", [tmp_path / "x.csv"])
    with pytest.raises(UserError, match="source 'tmall' expects 1 to 2 raw file"):
        read_source("tmall", [])
    with pytest.raises(UserError, match=r"^.*missing\.csv: file not found$"):
        read_source("csv", [tmp_path / "missing.csv"])
    with pytest.raises(UserError, match="option action_type: unknown value '9'"):
        read_source("tmall", [tmp_path / "x.csv"], {"action_type": 9})
