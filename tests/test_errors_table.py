"""Runs every row of docs/errors.md (the table of input errors): each call must raise
the listed exception with exactly the listed message. The imports come from the table's own code
block, so the documentation and the tests cannot drift apart.
"""
from __future__ import annotations

import builtins
import re
import warnings
from pathlib import Path
from typing import Dict, List, NamedTuple

import pytest

import pdl_ext

TABLE = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


class Row(NamedTuple):
    function: str
    bad_input: str
    call: str
    raises: str
    message: str


def _unquote(cell: str) -> str:
    cell = cell.strip()
    return cell[1:-1] if len(cell) >= 2 and cell[0] == cell[-1] == "`" else cell


def _parse(text: str) -> List[Row]:
    rows = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue  # prose, the header and its separator
        cells = [c for c in line.strip().strip("|").split("|")]
        assert len(cells) == 5, f"a row of the errors table must have 5 cells: {line}"
        rows.append(Row(*(_unquote(c) for c in cells)))
    return rows


def _imports(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "the errors table must hold exactly one python block (its imports)"
    return blocks[0]


TEXT = TABLE.read_text(encoding="utf-8")
ROWS = _parse(TEXT)


def _message_pattern(message: str) -> str:
    # `…` in the table stands for a machine-dependent part (paths, long lists)
    return ".*".join(re.escape(part) for part in message.split("…"))


@pytest.fixture
def namespace(tmp_path, monkeypatch) -> Dict[str, object]:
    monkeypatch.chdir(tmp_path)  # relative names ('missing.pth') never exist
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache: no weights found
    ns: Dict[str, object] = {}
    exec(_imports(TEXT), ns)
    return ns


def test_the_table_parses_and_has_rows():
    assert len(ROWS) > 50
    assert len({(r.function, r.bad_input) for r in ROWS}) == len(ROWS), "a (function, bad input) pair is listed twice"


def test_every_exported_function_and_class_has_rows():
    listed = {r.function.split(".")[0] for r in ROWS}
    exported = {name for name in pdl_ext.__all__ if callable(getattr(pdl_ext, name))
                and not isinstance(getattr(pdl_ext, name), type(pdl_ext))}
    missing = sorted(exported - listed - {"extension_info"})  # extension_info takes no input
    assert not missing, f"exported without a row in the errors table: {missing}"


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.function}: {r.bad_input}" for r in ROWS])
def test_row(row: Row, namespace):
    expected = getattr(builtins, row.raises, None)
    assert isinstance(expected, type) and issubclass(expected, BaseException), f"unknown exception {row.raises}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BaseException) as info:
            eval(row.call, namespace)
    assert type(info.value) is expected, f"{row.call} raised {type(info.value).__name__}: {info.value}"
    assert re.fullmatch(_message_pattern(row.message), str(info.value), flags=re.S), (
        f"message of {row.call}:\n  got      {info.value}\n  expected {row.message}")


