"""Where a user's tables come from: a file, a directory or glob of Parquet/CSV files, or an
object-store URI (through `mlem_ray.storage`'s pyarrow.fs layer), and how their columns are read
so that nothing is changed on the way in:

- a CSV's id column is read as text (``007`` and ``7`` are two entities; a reader that inferred
  integers would merge them); a Parquet id column keeps its stored type;
- every Arrow text type (``string``, ``large_string`` as pandas 3 writes it, ``string_view``,
  dictionaries of text) is text;
- nested columns (struct, list, map) named as fields are refused with one line.
"""
from __future__ import annotations

import fnmatch
import glob as globlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .. import storage
from .schema import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class InputFile:
    """One file of an input table: its location (a path or a URI) and size in bytes."""

    location: str
    size: int
    row_groups: tuple | None = None  # a Parquet file's row groups to read (None: all), so one file can be split

    @property
    def is_parquet(self) -> bool:
        return self.location.lower().endswith(PARQUET_SUFFIXES)


def _table_files(names: list[str]) -> list[str]:
    return [n for n in names if n.lower().endswith(PARQUET_SUFFIXES + CSV_SUFFIXES)
            and not Path(n).name.startswith((".", "_"))]


def list_files(location, what: str = "events") -> list[InputFile]:
    """The files of a table, in a fixed order (sorted by name): a file; a directory (its Parquet
    or CSV files, recursively); a glob; a URI to any of these. One format per table."""
    import pyarrow.fs as pafs

    text = str(location)
    try:
        fs, path = storage.resolve(text)
    except storage.StorageError as e:
        raise DataError(f"{what}: {e}") from None
    is_glob = any(c in path for c in _GLOB_CHARS)
    try:
        if is_glob and fs.type_name == "local":
            names = sorted(p for p in globlib.glob(path, recursive=True) if Path(p).is_file())
        elif is_glob:
            base = path[: min(path.find(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0]
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            names = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path))
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise DataError(f"{what} file {text} does not exist")
            if info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                names = sorted(i.path for i in infos if i.type == pafs.FileType.File)
                names = _table_files(names)
                if not names:
                    raise DataError(f"{what} directory {text} holds no .parquet or .csv files")
            else:
                names = [path]
    except OSError as e:
        raise DataError(f"cannot read {what} {text}: {storage.explain(e)}") from None
    if not names:
        raise DataError(f"{what}: no file matches {text}")
    kinds = {n.lower().endswith(PARQUET_SUFFIXES) for n in names}
    if len(kinds) > 1:
        raise DataError(f"{what} {text} mixes Parquet and CSV files; keep one format per table")
    files = []
    for n in names:
        loc = n if fs.type_name == "local" else storage.uri_of(fs, n)
        size = fs.get_file_info(n).size or 0
        if size == 0:
            raise DataError(f"{what} file {loc} is empty")
        files.append(InputFile(loc, int(size)))
    return files


def csv_convert_options(text_cols=()):
    """CSV reading that keeps the id columns' text (leading zeros)."""
    from pyarrow import csv

    return csv.ConvertOptions(column_types={c: pa.string() for c in text_cols})


def _open_input(location: str):
    fs, path = storage.resolve(location)
    return fs.open_input_file(path)


def read_file(file: InputFile, what: str, text_cols=(), columns=None) -> pa.Table:
    """One file, whole. One line for an unreadable file."""
    try:
        if file.is_parquet:
            import pyarrow.parquet as pq

            with _open_input(file.location) as f:
                return pq.read_table(f, columns=columns)
        from pyarrow import csv

        with _open_input(file.location) as f:
            table = csv.read_csv(f, convert_options=csv_convert_options(text_cols))
        return table.select(columns) if columns else table
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        raise DataError(f"cannot read {what} file {file.location}: {_first_line(e)}") from None


def iter_batches(file: InputFile, what: str, columns, text_cols=(), batch_size: int = 1 << 20):
    """One file's record batches of the named columns, in file order."""
    try:
        if file.is_parquet:
            import pyarrow.parquet as pq

            with _open_input(file.location) as f:
                pf = pq.ParquetFile(f)
                missing = [c for c in columns if c not in pf.schema_arrow.names]
                if missing:
                    raise DataError(f"{what} file {file.location} has no column {missing[0]!r} "
                                    f"(columns: {', '.join(pf.schema_arrow.names)})")
                # One row group at a time: iter_batches pre-buffers the compressed bytes of every row
                # group it is given and frees them only at its end (26 MB a row group of the standard
                # table: 0.65 GB for a quarter of the 100M-event file), so memory would grow with the file.
                groups = file.row_groups if file.row_groups is not None else range(pf.metadata.num_row_groups)
                for g in groups:
                    yield from pf.iter_batches(batch_size=batch_size, columns=list(columns), row_groups=[g])
            return
        from pyarrow import csv

        with _open_input(file.location) as f:
            reader = csv.open_csv(f, convert_options=csv_convert_options(text_cols),
                                  read_options=csv.ReadOptions(block_size=1 << 26))
            names = reader.schema.names
            missing = [c for c in columns if c not in names]
            if missing:
                raise DataError(f"{what} file {file.location} has no column {missing[0]!r} (columns: {', '.join(names)})")
            for batch in reader:
                yield batch.select(list(columns))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot read {what} file {file.location}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def read_table(location, what: str = "events", text_cols=()) -> pa.Table:
    """A whole table (all its files) in memory; one line for a missing, unreadable or empty one."""
    files = list_files(location, what)
    tables = [read_file(f, what, text_cols) for f in files]
    if len(tables) == 1:
        table = tables[0]
    else:
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataError(f"the {what} files of {location} do not share their columns' types: {_first_line(e)}") from None
    if table.num_rows == 0:
        raise DataError(f"{what} file {location} has a header but no rows")
    return table


# ---- column types ----------------------------------------------------------------------------

def is_text(t: pa.DataType) -> bool:
    """Any Arrow text type, a dictionary of text included."""
    if pa.types.is_dictionary(t):
        return is_text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_view(t)


def _is_string_view(t: pa.DataType) -> bool:
    check = getattr(pa.types, "is_string_view", None)
    return bool(check and check(t))


def is_nested(t: pa.DataType) -> bool:
    return pa.types.is_nested(t) or (pa.types.is_dictionary(t) and pa.types.is_nested(t.value_type))


def check_not_nested(table_schema: pa.Schema, cols, what: str) -> None:
    for c in cols:
        t = table_schema.field(c).type
        if is_nested(t):
            raise DataError(f"{what} column {c!r} holds nested values ({t}); name plain columns (flatten it into "
                            "one column per part first)")


def plain(col):
    """A column with text as ``string`` and dictionaries decoded, so that every later step sees one
    text type and one spelling of each value."""
    t = col.type
    if pa.types.is_dictionary(t):
        col = pc.cast(col, t.value_type)
        t = col.type
    if is_text(t) and not pa.types.is_string(t):
        col = pc.cast(col, pa.string())
    return col
