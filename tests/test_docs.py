"""The README and docs/ describe the code as it is: every file and test they name exists, every config is listed,
and they carry no project history."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("model", "data", "tests", "docs", "scripts", "config", "benchmarks")
FILE_ENDINGS = (".py", ".md", ".sh", ".json", ".png", ".toml", ".csv", ".sbatch")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*[\w/])(?:::(\w+))?" % "|".join(TOP))


def named_paths(text: str) -> list[tuple[str, str | None]]:
    """Repository paths a page names (model/..., tests/x.py::test_y, ...), without placeholders like <run>."""
    return [(m.group(1), m.group(2)) for m in PATH.finditer(text) if "<" not in m.group(0)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_file_and_test_a_page_names_exists(page):
    missing = []
    for path, test in named_paths(page.read_text()):
        if not path.endswith(FILE_ENDINGS) and not path.endswith("/"):
            continue  # a user's folder such as data/ffhq, not a file of the repository
        target = ROOT / path
        if not target.exists():
            missing.append(path)
        elif test is not None and f"def {test}(" not in target.read_text():
            missing.append(f"{path}::{test}")
    assert not missing, f"{page.name} names what does not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_speak_of_the_software_not_its_history(page):
    text = page.read_text()
    for pattern in (r"\bissue \d+", r"\brerun\b", r"\bsession\b", r"\bwas lent\b"):
        assert not re.search(pattern, text, re.IGNORECASE), (page.name, pattern)
    assert "DESIGN.md" not in text  # a note outside the repository


def test_every_config_is_documented_and_every_documented_config_exists():
    page = (ROOT / "docs" / "configuration.md").read_text()
    listed = set(re.findall(r"`([\w-]+)\.json`", page))
    files = {p.stem for p in (ROOT / "config").glob("*.json")}
    assert files <= listed, f"configs missing from docs/configuration.md: {sorted(files - listed)}"
    assert listed <= files, f"docs/configuration.md lists configs that do not exist: {sorted(listed - files)}"


def test_the_readme_stays_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, page.name


def test_code_cites_only_files_of_the_repository():
    """Docstrings and comments may point to docs/ and other files; those must exist too."""
    missing = []
    for py in [*ROOT.glob("model/**/*.py"), *ROOT.glob("data/*.py"), *ROOT.glob("benchmarks/*.py")]:
        for path, _ in named_paths(py.read_text()):
            if path.endswith((".py", ".md", ".sh", ".json")) and not (ROOT / path).exists():
                missing.append(f"{py.relative_to(ROOT)}: {path}")
    assert not missing, missing
