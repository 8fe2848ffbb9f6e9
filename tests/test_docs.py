"""The manual: it builds strictly (warnings and broken references fail), its generated references read the live
objects (a dummy flag, setting and registry entries appear on the built pages), and every runnable block runs.

A runnable block is a fence whose info string says so: ```` ```bash runnable ```` (``tiny``: the test adds small
settings to each ``run``/``worker`` command the block does not set itself; ``expect=TEXT``: its output must hold
TEXT). ```` ```python file=NAME ```` blocks are written to NAME first, so a page's study files are the ones its
commands run. Each page runs in its own temp dir.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the manual needs the docs extra: pip install -e '.[docs]'")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: What tiny runs use unless the command sets it: one epoch on 100 of the 8x8 digits, 1 seed, a short measure.
TINY = {"--preset": "quick", "--epochs": "1", "--limit": "100", "--dataset": "digits", "--seeds": "1",
        "--act-images": "32"}
#: What each subcommand prints when it worked (checked where its output is not redirected).
EXPECTED = {"run": "Optuna storage", "worker": "ran", "report": "trials:", "overhead": "params", "list": "",
            "help": "usage:"}
STUDY_COMMAND = re.compile(r"run_study\.py\s+(run|worker|report|overhead|list)\b")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: its info string's words, its text, the line it starts on."""

    words: tuple[str, ...]
    text: str
    line: int

    @property
    def runnable(self) -> bool:
        return "runnable" in self.words[1:]

    @property
    def file(self) -> str | None:
        return next((w.partition("=")[2] for w in self.words[1:] if w.startswith("file=")), None)

    @property
    def expected(self) -> list[str]:
        """What the block's output must hold besides its commands' usual lines: ``expect=TEXT`` words."""
        return [w.partition("=")[2] for w in self.words[1:] if w.startswith("expect=")]


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced block of ``markdown``, outer ones only (an example fence inside a longer one stays text)."""
    blocks, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        opening = re.match(r"^(`{3,}|~{3,})(.*)$", lines[i])
        if not opening:
            i += 1
            continue
        fence, start, body = opening.group(1), i + 1, []
        i += 1
        while i < len(lines) and not re.match(rf"^{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        blocks.append(Block(tuple(opening.group(2).split()), "\n".join(body) + "\n", start))
        i += 1
    return blocks


def pages() -> list[Path]:
    """The manual's Markdown pages and the README."""
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts) + [ROOT / "README.md"]


def runnable_pages() -> list[Path]:
    """The pages with at least one runnable block."""
    return [p for p in pages() if any(b.runnable for b in fenced_blocks(p.read_text()))]


def tiny(script: str) -> str:
    """``script`` with TINY's settings added to each ``run_study.py run``/``worker`` command that lacks them."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        code, hash_, comment = line.partition(" #")
        parts = re.split(r"(\s*&&\s*|\s*;\s*)", code)
        for k, part in enumerate(parts):
            if re.search(r"run_study\.py\s+(run|worker)\b", part):
                missing = [f"{flag} {value}" for flag, value in TINY.items() if flag not in part.split()]
                parts[k] = " ".join([part.rstrip(), *missing, "--no-progress"])
        out.append("".join(parts) + hash_ + comment)
    return "\n".join(out) + "\n"


def run_page(page: Path, workdir: Path) -> list[tuple[Block, subprocess.CompletedProcess]]:
    """Write the page's files and run its runnable blocks in order in ``workdir``; each block's result."""
    (workdir / "run_study.py").symlink_to(ROOT / "run_study.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "GIT_PYTHON_REFRESH": "quiet",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key in ("MLFLOW_TRACKING_URI", "ACON_STORAGE"):  # the default stores: SQLite files in workdir
        env.pop(key, None)
    results = []
    for block in fenced_blocks(page.read_text()):
        if block.file:
            (workdir / block.file).write_text(block.text)
        if block.runnable:
            script = tiny(block.text) if "tiny" in block.words else block.text
            proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=workdir, env=env,
                                  capture_output=True, text=True, timeout=300)
            results.append((block, proc))
    return results


def test_fenced_blocks_reads_the_info_string_and_keeps_inner_fences_as_text():
    page = textwrap.dedent("""\
        ````markdown
        ```bash runnable
        not a block of the page
        ```
        ````
        ```python file=my_study.py
        STUDY = 1
        ```
        ```bash runnable tiny expect=relu/all
        python run_study.py run my_study.py --seeds 3 && python run_study.py report my_study  # the table
        ```
        """)
    blocks = fenced_blocks(page)
    assert [b.words for b in blocks] == [("markdown",), ("python", "file=my_study.py"),
                                         ("bash", "runnable", "tiny", "expect=relu/all")]
    assert blocks[2].expected == ["relu/all"] and blocks[1].expected == []
    assert [b.runnable for b in blocks] == [False, False, True]
    assert blocks[1].file == "my_study.py" and blocks[1].text == "STUDY = 1\n"
    script = tiny(blocks[2].text)
    assert "run my_study.py --seeds 3 --preset quick --epochs 1 --limit 100 --dataset digits --act-images 32" in script
    assert "--seeds 1" not in script  # the block's own --seeds wins
    assert script.endswith("&& python run_study.py report my_study  # the table\n")  # report takes no settings


def test_the_manual_has_runnable_blocks_on_tutorial_and_howto_pages():
    found = {p.relative_to(ROOT).parts[1] for p in runnable_pages() if p.parent != ROOT}
    assert {"tutorials", "howto", "reference"} <= found


@pytest.fixture(scope="module")
def background(request, tmp_path_factory):
    """The module's slow work, started at once on every core: the two builds, then the selected pages' blocks
    (most runs first). A test waits for its own part, so on 2 cores the module takes about half as long."""
    wanted = {getattr(item, "originalname", "") for item in request.session.items}
    chosen = [item.callspec.params["page"] for item in request.session.items
              if getattr(item, "originalname", "") == "test_every_runnable_block_runs"]
    chosen.sort(key=lambda p: -p.read_text().count("run_study.py"))
    jobs: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        if "test_the_manual_builds_strictly" in wanted:
            jobs["build"] = pool.submit(sphinx_build, tmp_path_factory.mktemp("build") / "html")
        if "test_generated_references_show_what_is_declared_at_build_time" in wanted:
            jobs["dummies"] = pool.submit(dummy_build, tmp_path_factory.mktemp("dummies"))
        for page in chosen:
            jobs[str(page)] = pool.submit(run_page, page, tmp_path_factory.mktemp(page.stem))
        yield jobs


@pytest.mark.slow
@pytest.mark.parametrize("page", runnable_pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_runnable_block_runs(page, background):
    for block, proc in background[str(page)].result():
        where = f"{page.relative_to(ROOT)}:{block.line}"
        assert proc.returncode == 0, f"{where} exited {proc.returncode}\n{block.text}\n{proc.stdout}\n{proc.stderr}"
        assert "error:" not in proc.stderr, f"{where}\n{proc.stderr}"
        for text in block.expected:
            assert text in proc.stdout, f"{where}: no {text!r} in\n{proc.stdout}"
        for line in block.text.splitlines():
            command = STUDY_COMMAND.search(line)
            if command and ">" not in line:
                expected = EXPECTED["help" if "--help" in line.split() else command.group(1)]
                assert expected in proc.stdout, f"{where}: {line}\n{proc.stdout}"


def sphinx_build(out: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    """The strict build CI runs (warnings, broken references and missing documents fail it) into ``out``."""
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html", str(DOCS), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=600)
    return proc, out


@pytest.mark.slow
def test_the_manual_builds_strictly(background):
    proc, out = background["build"].result()
    assert proc.returncode == 0, proc.stderr
    home = (out / "index.html").read_text()
    for page in ("tutorials/first-study", "reference/cli", "explanation/acon", "changelog"):
        assert f'href="{page}.html"' in home, page


DUMMIES = '''
import dataclasses
import run_study
from studies import settings
from studies.training.config import setting
from acon.generators import register_generator
from ablation import register_policy
from acon.modules import AconC

register_generator("docs_dummy_generator", lambda channels, **kw: AconC(channels, **kw), help="a dummy generator")
register_policy("docs_dummy_placement", lambda sites, arg: sites, help="a dummy placement")

@dataclasses.dataclass(frozen=True)
class WithDummy(settings.Settings):
    docs_dummy_setting: int = setting(7, "a dummy setting", low=3, high=9)

settings.FIELDS = dataclasses.fields(WithDummy)
plain = run_study.build_parser

def with_dummy_flag():
    parser = plain()
    parser.add_argument("--docs-dummy-flag", help="a dummy top-level flag")
    return parser

run_study.build_parser = with_dummy_flag
'''


def dummy_build(workdir: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """The manual built with DUMMIES declared first (``ACON_DOCS_PRELOAD``, which ``docs/conf.py`` runs)."""
    preload = workdir / "dummies.py"
    preload.write_text(DUMMIES)
    return sphinx_build(workdir / "html", {"ACON_DOCS_PRELOAD": str(preload)})


@pytest.mark.slow
def test_generated_references_show_what_is_declared_at_build_time(background):
    proc, out = background["dummies"].result()
    assert proc.returncode == 0, proc.stderr
    cli, settings_page, registries = ((out / "reference" / f"{page}.html").read_text()
                                      for page in ("cli", "settings", "registries"))
    assert "--docs-dummy-flag" in cli and "a dummy top-level flag" in cli
    assert "--docs-dummy-setting" in cli  # the run/worker flags come from the same declaration
    assert "docs_dummy_setting" in settings_page and "3..9" in settings_page
    assert "docs_dummy_generator" in registries and "a dummy generator" in registries
    assert "docs_dummy_placement" in registries
