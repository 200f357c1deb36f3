"""The team's own model: `train.model: {class_path, init_args}` and the code it ships.

A `class_path` names a class or a function that returns an `nn.Module`, by its dotted
path (`my_models.TinyResNet`, `torchvision.models.resnet18`). It is imported only
from the team's own code folders (`train.code`), from an installed package that
`train.requirements` names, or from Lepton's own models: anything else
(`os.system`, `subprocess.Popen`, `builtins.eval`) is refused before any import, so
a params form is no way to run arbitrary calls. `init_args` are plain JSON values;
the strings `${input_shape}`, `${in_channels}` and `${n_outputs}` are filled in from
the prepared data.

The team's code travels with every checkpoint as a `CodeBundle` (the source files of
the `train.code` folders, and their hash). A checkpoint rebuilds its model from its
own bundle, never from the project's current tree, and each bundle is imported under
its own module names, so two versions of `my_models` live side by side in one
process (the gate scores both, the server swaps one for the other).

The model contract: `forward(float32 (B, *input_shape)) -> (B, n_outputs)`.

The team's data loader (`data.format: custom`, lepton_core.data.loader) is resolved
the same way, from the folders of `data.loader.code` only (`LOADER_SOURCE`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from lepton_core.errors import LeptonError

CLASS_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
PLACEHOLDERS = ("input_shape", "in_channels", "n_outputs")
LEPTON_MODELS = "lepton_core.models"
_MAX_CODE_BYTES = 20 * 2**20  # a bundle is source code, not data or weights


class ModelError(LeptonError):
    """The team's model cannot be built or does not keep the model contract (one line)."""


# ---------------------------------------------------------------- the code that travels
@dataclass(frozen=True)
class CodeBundle:
    """The source files of the team's code folders: {"my_models/__init__.py": text}.
    Top-level names (`my_models`) are what a class path may start with."""

    files: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for rel in sorted(self.files):
            h.update(rel.encode() + b"\0" + self.files[rel].encode() + b"\0")
        return h.hexdigest()[:16]

    @property
    def top_names(self) -> set[str]:
        return {rel.split("/", 1)[0].removesuffix(".py") for rel in self.files}

    @classmethod
    def from_folders(cls, folders: list[str], base: Path, field: str = "train.code") -> CodeBundle:
        """The `.py` files of each folder (a package, imported by its name) or file (a
        module); relative paths are taken from `base` (the project). `field` is the
        params field the folders came from, as messages name it."""
        files: dict[str, str] = {}
        for entry in folders:
            path = Path(entry) if Path(entry).is_absolute() else base / entry
            if path.is_file() and path.suffix == ".py":
                files[path.name] = path.read_text()
            elif path.is_dir():
                for f in sorted(path.rglob("*.py")):
                    if "__pycache__" not in f.parts:
                        files[f"{path.name}/{f.relative_to(path).as_posix()}"] = f.read_text()
            else:
                raise ModelError(f"{field}: {entry} is neither a folder nor a .py file (under {base})")
        if sum(len(t) for t in files.values()) > _MAX_CODE_BYTES:
            raise ModelError(f"{field}: more than {_MAX_CODE_BYTES >> 20} MiB of source; ship code, not data")
        return cls(files)


_loaded: dict[str, dict[str, ModuleType]] = {}  # bundle digest -> its top-level modules
_import_lock = threading.Lock()


def _bundle_dir(bundle: CodeBundle) -> Path:
    """The bundle's files on disk (written once per digest, renamed into place)."""
    root = Path(tempfile.gettempdir()) / f"lepton-code-{os.getuid()}" / bundle.digest
    if not root.is_dir():
        tmp = root.with_name(f".{root.name}.{os.getpid()}.{threading.get_ident()}")
        for rel, text in bundle.files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        try:
            os.replace(tmp, root)
        except OSError:  # another process wrote the same digest first
            pass
    return root


@contextmanager
def _own_names(names: set[str]) -> Iterator[dict[str, ModuleType]]:
    """Import with `names` free in sys.modules; afterwards the modules imported under
    them are handed out and whatever was there before is put back."""
    saved = {k: m for k, m in sys.modules.items() if k.split(".", 1)[0] in names}
    for k in saved:
        del sys.modules[k]
    got: dict[str, ModuleType] = {}
    try:
        yield got
    finally:
        for k in [k for k in sys.modules if k.split(".", 1)[0] in names]:
            got[k] = sys.modules.pop(k)
        sys.modules.update(saved)


def bundle_modules(bundle: CodeBundle, field: str = "train.code") -> dict[str, ModuleType]:
    """The bundle's modules, imported once per digest under names of its own
    (`lepton_code_<digest>.my_models`), whatever else of that name is imported."""
    with _import_lock:
        if bundle.digest in _loaded:
            return _loaded[bundle.digest]
        where = str(_bundle_dir(bundle))
        sys.path.insert(0, where)
        importlib.invalidate_caches()
        try:
            with _own_names(bundle.top_names) as got:
                for name in sorted(bundle.top_names):
                    importlib.import_module(name)
        except Exception as e:
            raise ModelError(f"{field}: importing the team's code failed: {_first_line(e)}") from None
        finally:
            sys.path.remove(where)
        prefix = f"lepton_code_{bundle.digest}"
        for k, m in got.items():
            sys.modules[f"{prefix}.{k}"] = m
        _loaded[bundle.digest] = got
        return got


# ---------------------------------------------------------------- resolving a class path
def import_names_of(requirements: list[str]) -> set[str]:
    """The top-level import names of the installed distributions `requirements` name."""
    wanted = {re.split(r"[\s\[<>=!~;]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requirements}
    names = set()
    for top, dists in importlib.metadata.packages_distributions().items():
        if any(d.lower().replace("_", "-") in wanted for d in dists):
            names.add(top)
    return names


@dataclass(frozen=True)
class Source:
    """Which params a class path and its code come from, as messages name them: the
    team's model (the default) or the team's data loader (`LOADER_SOURCE`)."""

    class_path: str = "train.model.class_path"
    code: str = "train.code"
    lepton_models: bool = True  # lepton_core.models.* may be named too
    requirements: str | None = "train.requirements"  # None: no installed packages


MODEL_SOURCE = Source()
LOADER_SOURCE = Source("data.loader.class_path", "data.loader.code", lepton_models=False, requirements=None)


def check_class_path(
    class_path: str, bundle: CodeBundle, requirements: list[str], source: Source = MODEL_SOURCE
) -> str:
    """Where `class_path` may come from ("code", "package" or "lepton"); ModelError,
    before anything is imported, when from nowhere allowed."""
    if not CLASS_PATH.match(class_path):
        raise ModelError(f"{source.class_path} {class_path!r}: expected a dotted path such as my_models.Net")
    top = class_path.split(".", 1)[0]
    if top in bundle.top_names:
        return "code"
    if source.lepton_models and class_path.startswith(LEPTON_MODELS + "."):
        return "lepton"
    if source.requirements is not None and top in import_names_of(requirements):
        return "package"
    places = [f"the folders in {source.code} ({', '.join(sorted(bundle.top_names)) or 'none'})"]
    places += [f"a package named in {source.requirements}"] if source.requirements is not None else []
    places += [LEPTON_MODELS] if source.lepton_models else []
    allowed = places[0] if len(places) == 1 else f"{', '.join(places[:-1])}, or {places[-1]}"
    raise ModelError(f"{source.class_path} {class_path!r} is not allowed: a class path must come from {allowed}")


def resolve(class_path: str, bundle: CodeBundle, requirements: list[str], source: Source = MODEL_SOURCE) -> Any:
    """The class or function `class_path` names (checked first, then imported)."""
    where = check_class_path(class_path, bundle, requirements, source)
    parts = class_path.split(".")
    if where == "code":
        modules = bundle_modules(bundle, source.code)
        for i in range(len(parts) - 1, 0, -1):
            mod = modules.get(".".join(parts[:i]))
            if mod is not None:
                return _attr(mod, parts[i:], class_path, source, tuple(sorted(bundle.top_names)))
        raise ModelError(f"{source.class_path} {class_path!r}: no such module in {source.code}")
    for i in range(len(parts) - 1, 0, -1):
        try:
            mod = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name and ".".join(parts[:i]).startswith(e.name):
                continue  # a shorter module path may hold it as an attribute
            raise ModelError(f"cannot import {class_path}: {_first_line(e)}") from None
        except Exception as e:
            raise ModelError(f"cannot import {class_path}: {_first_line(e)}") from None
        owner = (LEPTON_MODELS,) if where == "lepton" else (parts[0],)
        return _attr(mod, parts[i:], class_path, source, owner)
    raise ModelError(f"cannot import {class_path}: no such module")


def _within(name: str, allowed: tuple[str, ...]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


def _attr(
    mod: ModuleType, names: list[str], class_path: str, source: Source = MODEL_SOURCE, allowed: tuple[str, ...] = ()
) -> Any:
    """The attribute `names` of `mod`, which must be defined inside the `allowed`
    modules: a path through a module the allowed code merely imports
    (`my_models.os.system`) is refused before the call, as `os.system` itself is."""
    obj: Any = mod
    for n in names:
        if not hasattr(obj, n):
            raise ModelError(f"cannot import {class_path}: {mod.__name__.split('.')[-1]} has no {n!r}")
        obj = getattr(obj, n)
        if isinstance(obj, ModuleType) and not _within(obj.__name__, allowed):
            raise ModelError(
                f"{source.class_path} {class_path!r} is not allowed: it reaches module {obj.__name__}, "
                f"outside {', '.join(allowed)}"
            )
    if not callable(obj):
        raise ModelError(f"{source.class_path} {class_path!r} is not a class or a function")
    owner = getattr(obj, "__module__", None)
    if not isinstance(owner, str) or not _within(owner, allowed):
        raise ModelError(
            f"{source.class_path} {class_path!r} is not allowed: it names something defined in "
            f"{owner or 'no module'}, outside {', '.join(allowed)}"
        )
    return obj


# ---------------------------------------------------------------- building and checking
def fill_placeholders(init_args: Any, input_shape: tuple[int, ...], n_outputs: int) -> Any:
    """`init_args` with "${input_shape}", "${in_channels}" and "${n_outputs}" replaced
    (a whole-string placeholder takes the value's own type)."""
    values: dict[str, Any] = {
        "input_shape": list(input_shape),
        "in_channels": int(input_shape[0]),
        "n_outputs": int(n_outputs),
    }
    if isinstance(init_args, dict):
        return {k: fill_placeholders(v, input_shape, n_outputs) for k, v in init_args.items()}
    if isinstance(init_args, list):
        return [fill_placeholders(v, input_shape, n_outputs) for v in init_args]
    if isinstance(init_args, str):
        whole = re.fullmatch(r"\$\{(\w+)\}", init_args.strip())
        if whole and whole.group(1) in values:
            return values[whole.group(1)]
        for name in re.findall(r"\$\{(\w+)\}", init_args):
            if name not in values:
                raise ModelError(f"train.model.init_args: unknown placeholder ${{{name}}} (one of {PLACEHOLDERS})")
        return re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), init_args)
    return init_args


def build(class_path: str, init_args: dict[str, Any], bundle: CodeBundle, requirements: list[str]) -> nn.Module:
    """The team's model, built from its class path and (filled-in) init_args."""
    factory = resolve(class_path, bundle, requirements)
    name = class_path.rsplit(".", 1)[-1]
    try:
        model = factory(**init_args)
    except Exception as e:
        raise ModelError(f"{name}({_args_text(init_args)}) raised {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{class_path} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def check_contract(model: nn.Module, name: str, input_shape: tuple[int, ...], n_outputs: int) -> None:
    """forward(float32 (2, *input_shape)) must give (2, n_outputs) finite numbers."""
    x = torch.rand((2, *input_shape), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise ModelError(
            f"{name}.forward raised {_first_line(e)} on input (B, {', '.join(map(str, input_shape))})"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"{name}.forward returned a {type(out).__name__}, expected a tensor (B, {n_outputs})")
    if tuple(out.shape) != (2, n_outputs):
        got = ", ".join(["B", *map(str, out.shape[1:])]) if out.ndim else ""
        raise ModelError(f"{name}.forward: expected (B, {n_outputs}), got ({got})")


def _args_text(init_args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in init_args.items())[:200]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
