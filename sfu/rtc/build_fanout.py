"""Build the compiled fan-out step, :mod:`sfu.rtc._fanout`, next to its source.

    python -m sfu.rtc.build_fanout        # exit status 0: built (or up to date)

Needs a C compiler and the Python headers (Debian: ``build-essential``,
``python3.11-dev``). libsrtp is not linked: the module calls the ``srtp_protect`` that
pylibsrtp bundles, through an address taken from pylibsrtp's cffi library at start-up.
Where the build fails the server runs the pure-Python packet path (see
:mod:`sfu.rtc.batch`); ``make setup`` runs this and goes on either way.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_fanout.c"
TARGET = HERE / ("_fanout" + sysconfig.get_config_var("EXT_SUFFIX"))


def build(force: bool = False) -> Path:
    """Compile ``_fanout.c`` into ``sfu/rtc/`` (setuptools' ``build_ext --inplace``).

    Returns:
        the path of the built extension module.

    Raises:
        SystemExit or setuptools' errors: no compiler, no ``Python.h``.
    """
    if not force and TARGET.exists() and TARGET.stat().st_mtime >= SOURCE.stat().st_mtime:
        return TARGET
    from setuptools import Distribution, Extension

    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        raise SystemExit(f"no Python.h in {include}: install python3.11-dev (Debian)")
    root = HERE.parent.parent
    ext = Extension("sfu.rtc._fanout", [str(SOURCE.relative_to(root))], extra_compile_args=["-O2", "-Wall"])
    dist = Distribution({"name": "sfu-fanout", "ext_modules": [ext]})
    cmd = dist.get_command_obj("build_ext")
    cmd.inplace = True
    cmd.force = force  # setuptools' own up-to-date check compares mtimes only
    cmd.build_temp = str(root / "build" / "fanout")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cmd.ensure_finalized()
        cmd.run()
    finally:
        os.chdir(cwd)
    return TARGET


if __name__ == "__main__":
    path = build(force="--force" in sys.argv)
    print(f"built {path}")
