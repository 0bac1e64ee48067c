"""Make the intersphinx inventories the docs build reads, so it needs no network.

Sphinx links ``:class:`pandas.DataFrame``` and friends to other projects' pages by
reading each project's ``objects.inv``; docs/conf.py names these local copies instead
of fetching them. Run from the repository root, with the ``docs`` extra installed:

    python docs/_inventories/make.py python.inv=PATH pandas.inv=PATH dask.inv=PATH

* python, pandas, dask: copies of the ``objects.inv`` those projects publish with their
  HTML docs. The shipped ones come from Debian's documentation packages
  (``apt-get download python3.11-doc python-pandas-doc python-dask-doc``, then
  ``dpkg-deb -x`` each; the file is ``usr/share/doc/<package>/html/objects.inv``): Python
  3.11, pandas 1.5.3, Dask 2022.12.1. docs/conf.py's URLs match those versions.
* anyio has no such package: its inventory is built here from the installed anyio's
  public names. anyio's documentation puts its whole API on one page, ``api.html``,
  each name anchored by its full dotted name, which is what the entries point at.
"""

from __future__ import annotations

import importlib
import inspect
import shutil
import sys
from pathlib import Path

import sphobjinv as soi

HERE = Path(__file__).resolve().parent
ANYIO_MODULES = ("anyio", "anyio.abc", "anyio.to_thread", "anyio.from_thread", "anyio.lowlevel")


def anyio_inventory() -> soi.Inventory:
    import anyio

    inv = soi.Inventory()
    inv.project = "AnyIO"
    inv.version = anyio.__version__ if hasattr(anyio, "__version__") else ""
    for module_name in ANYIO_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", dir(module)):
            if name.startswith("_"):
                continue
            obj = getattr(module, name)
            if inspect.isclass(obj):
                role = "exception" if issubclass(obj, BaseException) else "class"
            elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
                role = "function"
            else:
                continue
            inv.objects.append(
                soi.DataObjStr(
                    name=f"{module_name}.{name}",
                    domain="py",
                    role=role,
                    priority="1",
                    uri="api.html#$",
                    dispname="-",
                )
            )
    return inv


def main(argv: list[str]) -> None:
    for arg in argv:
        target, _, source = arg.partition("=")
        shutil.copyfile(source, HERE / target)
    inv = anyio_inventory()
    (HERE / "anyio.inv").write_bytes(soi.compress(inv.data_file()))
    print(f"anyio.inv: {len(inv.objects)} names")


if __name__ == "__main__":
    main(sys.argv[1:])
