"""The one plugin mechanism: every extension point (tasks, methods, mitigations, native
backbones) is a class that sets ``name`` and is found by :func:`discover`, in the package's own
plugin modules and in a project folder next to benchmark.toml. Torch-free: the files it
imports may import torch, this module does not.

A plugin class declares its metadata as data (MTEB's task metadata, timm's registry):
``name`` (registry key), ``version`` (bumped by every change that can change results: results
record it, and results of another version are stale), ``description`` (one line),
``citation`` (the paper), ``reference`` (the implementation matched) and ``roles`` (what the
engine may use it for, e.g. ``"baseline"``: declared on the class, never inferred from a name).
Options are the keyword arguments of ``__init__`` with their defaults.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import pkgutil
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, ClassVar, Generic, Iterable, Iterator, Mapping, Sequence, TypeVar

from mtlbench.core.errors import PluginError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class Plugin:
    """Metadata every plugin class declares (see the module docstring)."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    roles: ClassVar[frozenset[str]] = frozenset()
    # the roles a plugin of this base may declare, with what each means (set by each base)
    ROLES: ClassVar[dict[str, str]] = {}

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        return keyword_defaults(cls.__init__)

    @classmethod
    def plugin_errors(cls) -> list[str]:
        """Problems with the class's declaration (checked when it is discovered)."""
        return []


def keyword_defaults(fn: Any, skip: Iterable[str] = ("self",)) -> dict[str, Any]:
    """The keyword parameters of ``fn`` with their defaults (None where there is none)."""
    out: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return out


def wrapper_version(own: str, base: str, base_version: str) -> str:
    """The version a wrapper method records: its own and its base's (``"1+fairgrad-2"``), so a
    new version of either makes its results stale; :func:`version_key` orders them."""
    return f"{own}+{base}-{base_version}"


def version_key(version: str) -> tuple[int, ...]:
    """``"1.10"`` -> (1, 10): versions compare numerically, part by part. A wrapper method's
    version names its base's (``"1+fairgrad-2"``): its own parts, then the base's."""
    own, plus, base = str(version).partition("+")
    if plus:
        return version_key(own) + (-2,) + version_key(base.rpartition("-")[2])
    return tuple(int(part) for part in str(version).split(".")) if VERSION_RE.match(str(version)) else (-1,)


P = TypeVar("P", bound=Plugin)


@dataclass
class Registry(Mapping[str, "type[P]"], Generic[P]):
    """The plugins of one kind: name -> class (a read-only mapping), and the file each came from."""

    kind: str
    classes: dict[str, type[P]] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    unnamed: list[tuple[str, str]] = field(default_factory=list)  # a project's plugin classes without `name`: (class, file)

    def __getitem__(self, name: str) -> type[P]:
        return self.classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    def with_role(self, role: str) -> list[str]:
        return [n for n, c in self.classes.items() if role in c.roles]

    def add(self, cls: type[P], source: Path) -> None:
        name = cls.__dict__["name"]
        problems = _declaration_errors(cls) + cls.plugin_errors()
        if problems:
            raise PluginError(f"{source}: {self.kind} {cls.__name__}: " + "; ".join(problems))
        if name in self.classes and self.classes[name] is not cls:
            raise PluginError(
                f"{source}: {self.kind} name {name!r} is already defined in {self.sources[name]}; rename one of them"
            )
        self.classes[name] = cls
        self.sources[name] = source


def discover(
    kind: str,
    base: type[P],
    *,
    packages: Sequence[str] = (),
    folders: Sequence[Path] = (),
    accept: Callable[[type], bool] | None = None,
) -> Registry[P]:
    """Every subclass of ``base`` that sets ``name`` in its own class body, in the modules of
    the importable ``packages`` (the built-in plugins) and in the ``*.py`` files of ``folders``
    (a project's plugins; files starting with ``_`` are skipped)."""
    registry: Registry[P] = Registry(kind)
    modules: list[tuple[ModuleType, Path]] = []
    for package in packages:
        pkg = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                module = importlib.import_module(f"{package}.{info.name}")
                modules.append((module, Path(module.__file__ or package)))
        modules.append((pkg, Path(pkg.__file__ or package)))
    project: set[Path] = set()
    for folder in folders:
        if Path(folder).is_dir():
            found = [(import_file(path), path) for path in sorted(Path(folder).glob("*.py")) if not path.name.startswith("_")]
            modules += found
            project |= {path for _, path in found}
    for module, path in modules:
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, base)
                and "name" in obj.__dict__
                and obj.__module__ == module.__name__
                and (accept is None or accept(obj))
            ):
                registry.add(obj, path)
            elif (  # a project's own class that looks like a plugin but sets no name: say so where a name is missing
                path in project
                and isinstance(obj, type)
                and issubclass(obj, base)
                and obj.__module__ == module.__name__
                and "name" not in obj.__dict__
                and not inspect.isabstract(obj)
            ):
                registry.unnamed.append((obj.__name__, str(path)))
    return registry


def _declaration_errors(cls: type[Plugin]) -> list[str]:
    out = []
    name = cls.__dict__["name"]
    if not isinstance(name, str) or not name or not NAME_RE.match(name):
        out.append(f"name must be a non-empty string of letters, digits, '_', '-', '.'; got {name!r}")
    if not isinstance(cls.version, str) or not VERSION_RE.match(cls.version):
        out.append(f'version must be a string of numbers joined by dots such as "1" or "2.1"; got {cls.version!r}')
    unknown = sorted(set(cls.roles) - set(cls.ROLES))
    if unknown:
        valid = ", ".join(f"{r!r} ({what})" for r, what in cls.ROLES.items()) or "(none)"
        out.append(f"unknown role(s) {unknown}; valid: {valid}")
    return out


def import_file(path: Path) -> ModuleType:
    """Import a plugin file under a module name unique to its path and content (imported once per
    process, again when the file changed)."""
    digest = hashlib.sha1(str(path.resolve()).encode() + b"\0" + path.read_bytes()).hexdigest()[:10]
    name = f"mtlbench_plugins.{path.parent.name}_{digest}.{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        tb = traceback.format_exc(limit=-3)
        raise PluginError(f"{path}: failed to import ({type(e).__name__}: {e})\n{tb}") from None
    return module
