"""``run_study.py list activations``: one line per activation, naming the options it accepts with their defaults."""
import re

import pytest

import run_study
from acon.activations import ACTIVATIONS


@pytest.fixture(scope="module")
def lines():
    """The listing's lines by activation name, printed by ``run_study.main`` in this process."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_study.main(["list", "activations"]) == 0
    return {line.split(maxsplit=1)[0]: line for line in out.getvalue().splitlines()}


def _named_options(line: str) -> set[str] | None:
    """The option names after ``options:`` (None for ``options: any``; empty when the line names none)."""
    if "options: " not in line:
        return set()
    listed = line.rsplit("options: ", 1)[1]
    # a name starts the list or follows ", ", and ends at "=", ", " or the line's end (tuple defaults hold ", ")
    return None if listed == "any" else set(re.findall(r"(?:^|, )([A-Za-z_]\w*)(?==|, |$)", listed))


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_each_activation_line_names_exactly_the_options_its_entry_accepts(name, lines):
    assert _named_options(lines[name]) == (None if ACTIVATIONS.entry(name).options is None
                                           else set(ACTIVATIONS.entry(name).options))


def test_rival_options_show_their_defaults(lines):
    assert "options: k=2, r=4, lambda_a=1, lambda_b=0.5, gate=sigmoid, channel_dim=1" in lines["dy_relu_b"]
    assert "temperature=1, bn=True" in lines["dy_relu_c"]
    assert lines["frelu"].endswith("options: kernel_size=3, bn=True, channel_dim=1")
    assert "options" not in lines["relu"]  # a baseline takes none
    assert sorted(lines) == ACTIVATIONS.names()  # one line per name, no continuation lines
