"""`make install` (scripts/install) into a temporary DESTDIR, checked file by file, and the unit
checked by `systemd-analyze verify` (issue 16).

What this covers: the files and modes the install puts outside and inside the prefix, that
nothing names the staging directory, that the venv's fgd runs and is not the checkout's, that
the installed daemon finds the shim packages and bundled libraries in its prefix, that an
edited /etc/fgd/fgd.toml is kept, that a second install changes nothing, and that uninstall
leaves only the state directory and the edited config. What it does not: apt-get and systemctl
(a DESTDIR install skips both; `make test-install` boots the package under systemd), and the
runtimes of every interpreter the node has (one besides the daemon's own, from the wheel cache).
The installs run offline (PIP_NO_INDEX): `make test` fetches fgd's wheels once beforehand.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fgd.config import RuntimesConfig
from fgd.interpreters import discover

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install"
PREFIX = "/opt/fgd"
SHIPPED_CONFIG = (REPO / "systemd" / "fgd.toml").read_bytes()
WHEELHOUSE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fgd" / "wheels"


def run_install(destdir: Path, *args: str) -> str:
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    done = subprocess.run(
        [str(SCRIPT), *args, "--destdir", str(destdir), "--wheelhouse", str(WHEELHOUSE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, f"scripts/install {args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: its type, mode, and content (link target; hash, except for .pyc
    files, whose header holds the source's mtime, which a reinstall changes)."""
    found: dict[str, tuple] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top, name)
            info = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                digest = "" if name.endswith(".pyc") else hashlib.sha256(path.read_bytes()).hexdigest()
                found[rel] = ("file", stat.S_IMODE(info.st_mode), digest)
    return found


def outside_venv(found: dict[str, tuple]) -> dict[str, tuple]:
    """What is not the virtualenv's own files (lib/, include/, bin/): checked one by one."""
    venv = ("opt/fgd/lib/", "opt/fgd/include/", "opt/fgd/bin/")
    return {path: what for path, what in found.items() if not path.startswith(venv)}


def other_interpreter() -> tuple[str, int] | None:
    """An interpreter of another minor version than the daemon's, to build runtimes for."""
    for interpreter in discover(RuntimesConfig()):
        if interpreter.origin != "daemon" and interpreter.minor != sys.version_info.minor:
            return interpreter.path, interpreter.minor
    return None


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fresh DESTDIR install without runtimes, installed twice."""
    destdir = tmp_path_factory.mktemp("plain") / "root"
    first = run_install(destdir, "install", "--no-runtimes")
    before = snapshot(destdir)
    second = run_install(destdir, "install", "--no-runtimes")
    return {"destdir": destdir, "first": first, "second": second, "before": before, "after": snapshot(destdir)}


def test_files_outside_the_venv_one_by_one(plain: dict) -> None:
    found = outside_venv(plain["after"])
    unit = (plain["destdir"] / "etc/systemd/system/fgd.service").read_text()
    docs = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    expected_files = {
        "etc/fgd/fgd.toml": 0o644,
        "etc/systemd/system/fgd.service": 0o644,
        "etc/tmpfiles.d/fgd.conf": 0o644,
        "opt/fgd/pyvenv.cfg": 0o644,
        "opt/fgd/share/fgd/fgd.toml": 0o644,
        "opt/fgd/share/fgd/installed-files": 0o644,
        "opt/fgd/share/doc/fgd/README.md": 0o644,
        **{f"opt/fgd/share/doc/fgd/{name}": 0o644 for name in docs},
    }
    files = {path: what[1] for path, what in found.items() if what[0] == "file"}
    assert files == expected_files
    links = {path: what[1] for path, what in found.items() if what[0] == "link"}
    # lib64 -> lib is the venv's own (made by `python -m venv` on 64-bit Debian).
    assert links == {"usr/local/bin/fgd": f"{PREFIX}/bin/fgd", "opt/fgd/lib64": "lib"}
    dirs = {path: what[1] for path, what in found.items() if what[0] == "dir"}
    assert set(dirs.values()) == {0o755}
    assert set(dirs) == {
        "etc", "etc/fgd", "etc/systemd", "etc/systemd/system", "etc/tmpfiles.d", "opt", "opt/fgd",
        "opt/fgd/bin", "opt/fgd/include", "opt/fgd/lib", "opt/fgd/share", "opt/fgd/share/doc",
        "opt/fgd/share/doc/fgd", "opt/fgd/share/fgd", "usr", "usr/local", "usr/local/bin",
    }  # fmt: skip
    destdir = plain["destdir"]
    assert (destdir / "etc/fgd/fgd.toml").read_bytes() == SHIPPED_CONFIG
    assert (destdir / "etc/tmpfiles.d/fgd.conf").read_bytes() == (REPO / "systemd/fgd.tmpfiles.conf").read_bytes()
    assert (destdir / "opt/fgd/share/fgd/installed-files").read_text().split() == [
        "/usr/local/bin/fgd",
        "/etc/systemd/system/fgd.service",
        "/etc/tmpfiles.d/fgd.conf",
    ]
    # The unit is the repository's, with ExecStart= and Documentation= naming the prefix.
    source = (REPO / "systemd/fgd.service").read_text().splitlines()
    changed = [(a, b) for a, b in zip(source, unit.splitlines(), strict=True) if a != b]
    assert changed == [
        ("Documentation=file:///usr/share/doc/fgd/README.md", f"Documentation=file://{PREFIX}/share/doc/fgd/README.md"),
        (
            "ExecStart=/usr/local/bin/fgd serve --state-dir /var/lib/fgd --config /etc/fgd/fgd.toml",
            f"ExecStart={PREFIX}/bin/fgd serve --state-dir /var/lib/fgd --config /etc/fgd/fgd.toml",
        ),
    ]
    assert "not touching systemd" in plain["first"]


def test_nothing_names_the_staging_directory(plain: dict) -> None:
    """The venv was made under DESTDIR; its scripts, pyvenv.cfg and .pyc files name /opt/fgd."""
    destdir = plain["destdir"]
    marker = str(destdir).encode()
    naming = []
    for top, _dirs, files in os.walk(destdir):
        for name in files:
            path = Path(top, name)
            if not path.is_symlink() and marker in path.read_bytes():
                naming.append(str(path.relative_to(destdir)))
    assert naming == []
    scripts = [p for p in (destdir / "opt/fgd/bin").iterdir() if p.is_file() and not p.is_symlink()]
    shebangs = {p.name: p.read_bytes().split(b"\n", 1)[0] for p in scripts if p.read_bytes().startswith(b"#!/")}
    assert shebangs["fgd"] == f"#!{PREFIX}/bin/python".encode()
    # pip's own scripts (from ensurepip) name python3.
    assert set(shebangs.values()) <= {f"#!{PREFIX}/bin/python".encode(), f"#!{PREFIX}/bin/python3".encode()}
    assert f"command = /usr/bin/python3 -m venv --clear {PREFIX}" in (destdir / "opt/fgd/pyvenv.cfg").read_text()


def test_installed_fgd_runs_from_the_venv_not_the_checkout(plain: dict) -> None:
    venv = plain["destdir"] / "opt/fgd"
    # The script's shebang names /opt/fgd, absent here: its own interpreter runs it.
    helped = subprocess.run(
        [str(venv / "bin/python"), str(venv / "bin/fgd"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: fgd")
    probe = (
        "import json, fgd, fgd.bundled, fgd.interpreters, fgd.nodejs; print(json.dumps([fgd.__file__, "
        "str(fgd.bundled.default_root()), fgd.interpreters.default_shim_dir(), str(fgd.nodejs.BUILD_DIR), "
        "str(fgd.nodejs.SHIM_SOURCE)]))"
    )
    where = subprocess.run([str(venv / "bin/python"), "-c", probe], capture_output=True, text=True, timeout=60, cwd="/")
    module, bundled, shims, node_build, node_shim = json.loads(where.stdout)
    site = venv / f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    assert Path(module).resolve().is_relative_to(site.resolve())
    assert not list(site.glob("__editable__*")) and not list(site.glob("*.egg-link"))
    assert Path(bundled) == venv / "bundled"
    assert Path(shims) == venv / "runtimes"
    # Issue 13: the Node.js modules are looked for in the prefix, and the shim (instance.js) is
    # installed with the package, byte for byte the checkout's.
    assert Path(node_build) == venv / "nodejs"
    assert Path(node_shim).resolve() == (site / "runtimes" / "nodejs").resolve()
    for name in ("instance.js", "keeper.py", "package.json", "bundled.json"):
        assert (Path(node_shim) / name).read_bytes() == (REPO / "runtimes/nodejs" / name).read_bytes()


def test_installed_tree_has_the_native_pid1_where_the_sandbox_package_finds_it(plain: dict) -> None:
    # Issue 15: compiled by scripts/install beside the installed sandbox package, root's, not writable by others.
    venv = plain["destdir"] / "opt/fgd"
    site = venv / f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
    native = site / "sandbox" / "fgd-pid1"
    assert stat.S_IMODE(native.stat().st_mode) == 0o755
    assert native.read_bytes()[:4] == b"\x7fELF"
    probe = "import json; from sandbox import reaper; print(json.dumps([reaper.native_path(), reaper.check_native()]))"
    where = subprocess.run([str(venv / "bin/python"), "-c", probe], capture_output=True, text=True, timeout=60, cwd="/")
    path, (ok, detail) = json.loads(where.stdout)
    assert Path(path) == native and ok, detail
    # Static: it needs nothing from the sandbox it is exec'd in (no program interpreter named).
    assert b"/ld-linux" not in native.read_bytes()
    # A usage error, as from the checkout's build: the program runs.
    assert subprocess.run([str(native)], timeout=5).returncode == 125


def test_second_install_changes_nothing(plain: dict) -> None:
    assert plain["before"] == plain["after"]
    assert "installed the default /etc/fgd/fgd.toml" in plain["first"]
    assert "/etc/fgd/fgd.toml is the shipped default, unchanged" in plain["second"]
    assert "reusing the virtualenv" in plain["second"]


def test_systemd_analyze_verifies_the_installed_unit(plain: dict, tmp_path: Path) -> None:
    """`systemd-analyze verify` checks ExecStart= names an executable; /opt/fgd is only staged
    here, so a copy of the installed unit names the staged one (the only line changed)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: `make test` installs it (Debian package systemd)"
    destdir = plain["destdir"]
    installed = (destdir / "etc/systemd/system/fgd.service").read_text()
    staged = installed.replace(f"ExecStart={PREFIX}/bin/fgd ", f"ExecStart={destdir}{PREFIX}/bin/fgd ")
    assert staged.count(str(destdir)) == 1
    unit = tmp_path / "fgd.service"
    unit.write_text(staged)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    # It does check: the same unit naming the unstaged path fails (nothing is at /opt/fgd here).
    if not Path(PREFIX, "bin/fgd").exists():
        unit.write_text(installed)
        done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and f"Command {PREFIX}/bin/fgd is not executable" in done.stderr


def test_uninstall_leaves_nothing(plain: dict) -> None:
    destdir = plain["destdir"]
    out = run_install(destdir, "uninstall")
    assert list(destdir.iterdir()) == []
    assert "no state directory /var/lib/fgd to keep" in out
    # Idempotent: a second uninstall finds nothing and says so.
    again = run_install(destdir, "uninstall")
    assert "removed fgd from /opt/fgd" in again and list(destdir.iterdir()) == []


def test_runtimes_edited_config_and_state_kept(tmp_path: Path) -> None:
    """With runtimes, for the daemon's interpreter and one other (an edited config names just
    that one): shim packages and bundled libraries in the prefix, found by the installed fgd."""
    other = other_interpreter()
    if not other:
        pytest.skip("needs a Python 3.9+ besides the daemon's (the development and CI machines have pyenv's)")
    path, minor = other
    destdir = tmp_path / "root"
    edited = f'[runtimes]\npython = ["{path}"]\nsearch = []\n'.encode()
    (destdir / "etc/fgd").mkdir(parents=True)
    (destdir / "etc/fgd/fgd.toml").write_bytes(edited)
    (destdir / "var/lib/fgd").mkdir(parents=True)
    (destdir / "var/lib/fgd/admin.token").write_text("secret\n")
    first = run_install(destdir, "install")
    before = snapshot(destdir)
    venv = destdir / "opt/fgd"
    # The edited config is kept; the shipped one is put next to it and listed for uninstall.
    assert (destdir / "etc/fgd/fgd.toml").read_bytes() == edited
    assert (destdir / "etc/fgd/fgd.toml.dist-new").read_bytes() == SHIPPED_CONFIG
    assert "kept your edited /etc/fgd/fgd.toml" in first
    assert "/etc/fgd/fgd.toml.dist-new" in (venv / "share/fgd/installed-files").read_text().split()
    # Runtimes for exactly the interpreters the edited config leaves: the other one's shim
    # packages (the daemon's own interpreter has its venv), bundled libraries for both.
    daemon_minor = sys.version_info.minor
    assert sorted(p.name for p in (venv / "runtimes").iterdir()) == [f"python3.{minor}"]
    assert sorted(p.name for p in (venv / "bundled").iterdir()) == sorted(
        [f"python3.{minor}", f"python3.{daemon_minor}"]
    )
    for tree in (venv / "bundled").iterdir():
        assert (tree / "fgd-bundled.json").is_file()
    # Issue 13: the Node.js shim's codec and FunctionGraph's bundled Node.js modules, read-only
    # for everyone but root, and the installed fgd serves the Node.js names with them.
    codec = venv / "nodejs/runtime/node_modules/@msgpack/msgpack/package.json"
    assert json.loads(codec.read_text())["name"] == "@msgpack/msgpack"
    wanted = json.loads((REPO / "runtimes/nodejs/bundled.json").read_text())["dependencies"]
    assert {name for name in wanted if (venv / "nodejs/bundled/node_modules" / name / "package.json").is_file()} == set(
        wanted
    )
    assert stat.S_IMODE((venv / "nodejs/bundled/node_modules").stat().st_mode) == 0o755
    served = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "from fgd.nodejs import NodeCatalogue, find_node, shim_built; "
            "print(shim_built(), 'Node.js18.15' in NodeCatalogue(find_node(), built=shim_built()).names())",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert served.stdout.split() == ["True", "True"], served.stderr
    second = run_install(destdir, "install")
    assert snapshot(destdir) == before
    assert "up to date" in second
    # The installed fgd, with that config, finds and probes them: the other interpreter can
    # run the runtime shim with the installed packages, and the bundled root is the prefix's.
    probe = (
        "import json, sys; from fgd import bundled, config, interpreters; "
        "rt = config.load(sys.argv[1]).runtimes; "
        "print(json.dumps([str(bundled.resolve_root(True, '')), "
        "[[i.path, i.usable, i.shim, i.reason] for i in interpreters.discover(rt)]]))"
    )
    seen = subprocess.run(
        [str(venv / "bin/python"), "-c", probe, str(destdir / "etc/fgd/fgd.toml")],
        capture_output=True,
        text=True,
        timeout=120,
        # Not the checkout: `python -c` puts the working directory first on sys.path.
        cwd="/",
    )
    assert seen.returncode == 0, seen.stderr
    root, found = json.loads(seen.stdout)
    assert Path(root) == (venv / "bundled").resolve()
    assert [path, True, str(venv / f"runtimes/python3.{minor}"), ""] in found
    # Uninstall keeps the state directory and the edited config, and says how to remove them.
    out = run_install(destdir, "uninstall")
    left = sorted(str(p.relative_to(destdir)) for p in destdir.rglob("*"))
    assert left == ["etc", "etc/fgd", "etc/fgd/fgd.toml", "var", "var/lib", "var/lib/fgd", "var/lib/fgd/admin.token"]
    assert "kept your edited /etc/fgd/fgd.toml; remove it with: rm -r /etc/fgd" in out
    assert "remove it with: rm -rf /var/lib/fgd" in out
