"""Import every module of a package once, so modules that register ops, spaces or strategies by name
need no edit of a shared ``__init__`` (several people add them side by side)."""

import importlib
import pkgutil


def import_submodules(package_name: str, package_path) -> None:
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
