"""FunctionGraph's bundled Python libraries: what they are, and where the built trees live.

FunctionGraph makes a set of libraries importable in every Python function without
packaging them (`requests`, `obs`, `numpy`, the Huawei Cloud SDK core, ...). fgd builds
them once per interpreter at install time (`scripts/build-bundled-libs`, run by `make`)
into `<root>/python<major>.<minor>/`, a plain `pip install --target` tree with a
`fgd-bundled.json` manifest. The daemon binds the whole root read-only into every
sandbox (one bind shared by all instances, see fgd.sandboxing) and each instance puts
its own interpreter's tree on the import path after the function's code, its
dependencies and the standard library, so a function's own copy of a library wins.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import msgspec

log = logging.getLogger("fgd.bundled")

# Where instances see the root of the trees (one sub-directory per interpreter).
SANDBOX_ROOT = "/opt/function/runtime/bundled"
MANIFEST = "fgd-bundled.json"
# The default root in a checkout: next to the source tree (what `make` builds).
SOURCE_ROOT = Path(__file__).resolve().parent.parent / "build" / "bundled"
# The default root of an installed fgd (scripts/install, `make install`, the .deb): in its
# virtualenv's prefix, next to the shim packages (fgd.interpreters.default_shim_dir).
INSTALLED_ROOT = Path(sys.prefix) / "bundled"


def default_root() -> Path:
    """Where the trees are unless [runtimes] bundled_libraries_dir says: a checkout has its
    pyproject.toml above the package; an installed fgd is in site-packages, which has none."""
    return SOURCE_ROOT if (SOURCE_ROOT.parent.parent / "pyproject.toml").is_file() else INSTALLED_ROOT


class Library(msgspec.Struct, frozen=True):
    """One bundled library: its PyPI name, the module a function imports, and from which
    interpreter on FunctionGraph ships it."""

    requirement: str
    module: str
    since: tuple[int, int] = (3, 0)
    # A version bound where the newest release lacks what FunctionGraph's users import.
    pin: str = ""

    @property
    def spec(self) -> str:
        """What pip is asked for."""
        return self.requirement + self.pin


# FunctionGraph's Python 3.9 list, and what Python 3.12 adds. Current PyPI releases, not
# FunctionGraph's old pins (several of those no longer install on current interpreters);
# pip picks the newest release that supports each interpreter.
LIBRARIES: tuple[Library, ...] = (
    Library("certifi", "certifi"),
    Library("chardet", "chardet"),
    Library("cloudpickle", "cloudpickle"),
    Library("httplib2", "httplib2"),
    Library("huaweicloudsdkcore", "huaweicloudsdkcore"),
    Library("huaweicloudsdksmn", "huaweicloudsdksmn"),
    Library("idna", "idna"),
    Library("numpy", "numpy"),
    # FunctionGraph's "obssdk": Huawei OBS's Python SDK, module `obs`.
    Library("esdk-obs-python", "obs"),
    Library("protobuf", "google.protobuf"),
    Library("pyasn1", "pyasn1"),
    Library("python-dateutil", "dateutil"),
    Library("pyyaml", "yaml"),
    Library("redis", "redis"),
    Library("requests", "requests"),
    Library("requests-futures", "requests_futures"),
    Library("requests-toolbelt", "requests_toolbelt"),
    # For `pkg_resources`, which setuptools removed in release 81.
    Library("setuptools", "pkg_resources", pin="<81"),
    Library("simplejson", "simplejson"),
    Library("six", "six"),
    Library("typing-extensions", "typing_extensions"),
    Library("urllib3", "urllib3"),
    Library("packaging", "packaging", (3, 12)),
    Library("platformdirs", "platformdirs", (3, 12)),
    Library("tomli", "tomli", (3, 12)),
    Library("typeguard", "typeguard", (3, 12)),
    Library("inflect", "inflect", (3, 12)),
    Library("more-itertools", "more_itertools", (3, 12)),
    Library("zipp", "zipp", (3, 12)),
    Library("importlib-metadata", "importlib_metadata", (3, 12)),
)


def libraries_for(version: tuple[int, int]) -> list[Library]:
    """What FunctionGraph bundles for an interpreter of this version."""
    return [library for library in LIBRARIES if version >= library.since]


def tree_name(version: tuple[int, int]) -> str:
    return f"python{version[0]}.{version[1]}"


class Manifest(msgspec.Struct, frozen=True):
    """What the builder wrote next to a tree."""

    python: str
    # What pip was asked for (with pins): a change rebuilds the tree.
    requested: list[str] = []
    # requirement -> installed version
    libraries: dict[str, str] = {}
    # requirement -> why it is not there (no release supports this interpreter, ...)
    skipped: dict[str, str] = {}


def tree_for(root: Path, version: tuple[int, int]) -> Path | None:
    """The built tree for an interpreter of `version` under `root`, or None if there is none."""
    tree = root / tree_name(version)
    return tree if (tree / MANIFEST).is_file() else None


def manifest_of(tree: Path) -> Manifest | None:
    try:
        return msgspec.json.decode((tree / MANIFEST).read_bytes(), type=Manifest)
    except (OSError, msgspec.DecodeError):
        return None


def resolve_root(enabled: bool, configured: str) -> Path | None:
    """The root to bind into sandboxes, or None when the libraries are off or not built.

    Not built is logged, not fatal: functions that package their own libraries still run.
    """
    if not enabled:
        log.info("bundled libraries: switched off by [runtimes] bundled_libraries")
        return None
    root = Path(configured) if configured else default_root()
    trees = sorted(p.name for p in root.glob("python3.*") if (p / MANIFEST).is_file()) if root.is_dir() else []
    if not trees:
        log.warning(
            "bundled libraries: none built under %s (run `make bundled` or scripts/build-bundled-libs); "
            "functions get only what they package",
            root,
        )
        return None
    log.info("bundled libraries: %s (%s)", root, ", ".join(trees))
    return root.resolve()
