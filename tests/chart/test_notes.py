"""NOTES.txt, what `helm install` prints: the next commands, and no file the user does
not have. The packaged chart holds no examples or docs, so NOTES may name only commands,
URLs into the repository at the release's tag (`<home>/blob|raw/v<appVersion>/PATH`,
PATH a file of this repository) and files inside the package."""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from tests.chart.chart import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    REPO,
    Tools,
    merged_values,
    run,
    value_args,
)

pytestmark = pytest.mark.timeout(120)

VALUE_SETS = [
    pytest.param((), id="defaults"),
    *(pytest.param((path,), id=path.stem) for path in CI_VALUES),
]
META = yaml.safe_load((CHART / "Chart.yaml").read_text())
URL = re.compile(r"https?://[^\s)\"'`<>]+")
#: A relative file path: directories, then a file name with an extension.
FILE_PATH = re.compile(r"(?<![\w/.:@-])((?:[\w.-]+/)+[\w-]+\.(?:ya?ml|md|json|txt|tpl|sh|py|tgz))\b")


def notes(tools: Tools, values: Iterable[Path], tmp: Path | None = None, release: str = "ft") -> str:
    proc = run([tools.helm, "install", release, CHART, "--dry-run=client", "--namespace", NAMESPACE,
                *value_args(values, tmp)])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def bad_references(text: str, packaged: set[str]) -> list[str]:
    """What NOTES names that a user who installed the packaged chart cannot open: a URL
    outside the repository's tag or to a path the repository lacks, or a relative path
    not in the package."""
    prefix = re.compile(re.escape(META["home"]) + r"/(?:blob|raw)/v" + re.escape(str(META["appVersion"])) + r"/(.+)")
    bad = []
    for url in (u.rstrip(".,;:") for u in URL.findall(text)):
        m = prefix.fullmatch(url)
        if m is None or not (REPO / m[1]).is_file():
            bad.append(url)
    for path in FILE_PATH.findall(URL.sub(" ", text)):
        if path not in packaged:
            bad.append(path)
    return bad


@pytest.fixture(scope="module")
def packaged(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The files of `helm package` of the chart, relative to the chart's root."""
    out = tmp_path_factory.mktemp("package")
    proc = run([tools.helm, "package", CHART, "--destination", out])
    assert proc.returncode == 0, proc.stderr
    [archive] = out.glob("flextrain-*.tgz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert "templates/NOTES.txt" in names and "values.yaml" in names
    return names


def test_the_reference_check_finds_files_the_package_lacks(packaged: set[str]) -> None:
    home, version = META["home"], META["appVersion"]
    text = (
        "kubectl apply -f examples/quickstart.yaml\n"
        f"see {home}/blob/v{version}/docs/nowhere.md and https://example.com/x.yaml.\n"
        f"fine: {home}/raw/v{version}/examples/quickstart.yaml, values.schema.json, templates/NOTES.txt"
    )
    assert bad_references(text, packaged) == [
        f"{home}/blob/v{version}/docs/nowhere.md", "https://example.com/x.yaml", "examples/quickstart.yaml",
    ]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_notes_name_only_urls_into_the_repository_and_files_in_the_package(
    tools: Tools, packaged: set[str], values: tuple[Path, ...]
) -> None:
    text = notes(tools, values)
    assert URL.search(text), "NOTES should link the install guide"
    assert bad_references(text, packaged) == [], text


@pytest.mark.parametrize("values", VALUE_SETS)
def test_notes_tell_the_next_commands(tools: Tools, values: tuple[Path, ...]) -> None:
    text = notes(tools, values)
    raw = f"{META['home']}/raw/v{META['appVersion']}"
    for command in ("kubectl -n flextrain-system rollout status deployment/ft-flextrain",
                    "kubectl get devicetiers", f"-f {raw}/examples/quickstart.yaml",
                    "kubectl get flextrainjobs -A -w", "kubectl describe flextrainjob",
                    "kubectl create rolebinding ml-edit --clusterrole=edit"):
        assert command in text, text
    settings = merged_values(*values)
    tiers_enabled = settings["deviceTiers"]["enabled"]
    assert (f"kubectl apply -f {raw}/examples/devicetiers.yaml" in text) is not tiers_enabled
    if tiers_enabled:
        names = " ".join(t["name"] for t in settings["deviceTiers"]["tiers"])
        assert f"The chart created these DeviceTiers: {names}\n" in text, text


def test_notes_without_user_roles_do_not_offer_them(tools: Tools, tmp_path: Path) -> None:
    text = notes(tools, [{"userRoles": {"create": False}}], tmp_path)
    assert "rolebinding" not in text and "-edit" not in text
    steps = re.findall(r"^(\d)\. ", text, re.MULTILINE)
    assert steps == ["1", "2", "3", "4"], text
