"""The documentation's Python examples run as written."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _examples():
    for path in DOCS:
        for i, code in enumerate(BLOCK.findall(path.read_text())):
            yield pytest.param(code, id=f"{path.name}#{i}")


@pytest.mark.parametrize("code", list(_examples()))
def test_example_runs(code):
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})


def test_quickstart_cpp_block_is_the_tested_example():
    """The C++ example in docs/quickstart.md is examples/cpp/reduce.cpp, which test_packaging builds and runs."""
    block = re.search(r"```cpp\n(.*?)```", (ROOT / "docs" / "quickstart.md").read_text(), re.S).group(1)
    assert block == (ROOT / "examples" / "cpp" / "reduce.cpp").read_text()
