"""The docs site: it builds with --strict (a broken link or a missing page fails), and every option of the
config dataclasses has a comment to document it, so the generated option reference misses none."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))

import options_hook  # noqa: E402

from hydra_plugins.hydra_awsbatch_launcher.config import (  # noqa: E402
    AwsBatchLauncherConf,
    AwsBatchLocalLauncherConf,
    BaseAwsBatchLauncherConf,
)
from hydra_plugins.hydra_thompson_sweeper.config import ThompsonSweeperConf  # noqa: E402

CONFIGS = [BaseAwsBatchLauncherConf, AwsBatchLocalLauncherConf, AwsBatchLauncherConf, ThompsonSweeperConf]


@pytest.mark.unit
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_option_has_a_comment_to_document_it(config):
    said = options_hook.comments(config)
    undocumented = [f.name for f in dataclasses.fields(config) if not f.name.startswith("_") and not said.get(f.name)]
    assert not undocumented, f"{config.__name__}: options with no comment above them: {undocumented}"


@pytest.mark.unit
def test_the_options_page_names_every_config():
    page = (ROOT / "docs/options.md").read_text()
    for config in CONFIGS:
        assert f":{config.__name__} -->" in page, f"docs/options.md has no table of {config.__name__}"


@pytest.mark.unit
def test_readme_fits_and_its_docs_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    pages = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert pages, "the README links to no docs page"
    missing = sorted({p for p in pages if not (ROOT / p).is_file()})
    assert not missing, f"README links to docs pages that do not exist: {missing}"
    for feature in ("docs/warm-workers.md", "docs/thompson.md", "docs/local-cloud.md"):
        assert f"({feature}" in readme, f"the README does not link {feature}"


@pytest.mark.integration
def test_the_site_builds_with_strict(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    options = (tmp_path / "site/options/index.html").read_text()
    for config in CONFIGS:
        for field in dataclasses.fields(config):
            if not field.name.startswith("_"):
                assert f"<code>{field.name}</code>" in options, f"{field.name} is missing from the built options page"
