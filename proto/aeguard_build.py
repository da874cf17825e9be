"""PEP 517 build backend: setuptools' own, after generating the gRPC stubs from proto/.

The stubs (``service/rpc/api/``) are generated, never committed, so every way of building a
package has to make them first: ``pip install .``, ``pip wheel .``, ``python -m build`` and the
editable install of ``make install``. pyproject.toml names this module as the backend
(``backend-path = ["proto"]``) and grpcio-tools as a build requirement; each build hook below
regenerates the stubs, then hands over to ``setuptools.build_meta`` unchanged.

``python proto/aeguard_build.py`` generates the stubs alone (``make proto``), with the same
protoc call.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401 - re-exported: the hooks this backend leaves alone
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = "proto/aeguard/v1"
#: The package the stubs land in: protoc's path mapping (``-I<package path>=<proto dir>``) makes
#: ``aeguard_pb2_grpc`` import ``service.rpc.api.aeguard_pb2`` by its package name.
STUB_PACKAGE = "service/rpc/api"


def generate_stubs(root: Path = ROOT) -> list[Path]:
    """Run grpcio-tools' protoc on proto/ and write the stubs into ``service/rpc/api/``.

    Returns the generated files; raises ``RuntimeError`` with protoc's exit status on failure.
    """
    import importlib.resources

    from grpc_tools import protoc

    out = root / STUB_PACKAGE
    out.mkdir(parents=True, exist_ok=True)
    # protoc.main, unlike `python -m grpc_tools.protoc`, does not add the bundled well-known types
    # (google/protobuf/struct.proto, which the API imports) to the include path by itself.
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{well_known}",
        f"-I{STUB_PACKAGE}={PROTO_DIR}",
        "--python_out=.",
        "--pyi_out=.",
        "--grpc_python_out=.",
        f"{STUB_PACKAGE}/aeguard.proto",
    ]
    previous = Path.cwd()
    try:
        # protoc resolves the -I mapping and the output paths against the working directory.
        os.chdir(root)
        status = protoc.main(args)
    finally:
        os.chdir(previous)
    if status != 0:
        raise RuntimeError(f"protoc failed with exit status {status} on {PROTO_DIR}/aeguard.proto")
    (out / "__init__.py").write_text(
        '"""Generated from proto/ at build time; never edited or committed."""\n'
    )
    return sorted(out.glob("aeguard_pb2*"))


def build_wheel(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    generate_stubs()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    generate_stubs()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    # The stubs go into the sdist with the service package. setuptools leaves proto/ out (it is no
    # package and there is no MANIFEST.in), but a wheel built from the sdist (python -m build) needs
    # this backend, and the .proto is the API's documentation: both are added to the archive.
    generate_stubs()
    name = _setuptools.build_sdist(sdist_directory, config_settings)
    extra = [Path(__file__).resolve(), *sorted((ROOT / PROTO_DIR).glob("*.proto"))]
    _add_to_sdist(Path(sdist_directory) / name, extra)
    return name


def _add_to_sdist(archive: Path, files: list[Path]) -> None:
    """Rewrite the gzipped tar ``archive`` with ``files`` added under its top directory."""
    with tarfile.open(archive, "r:gz") as src:
        members = []
        for member in src.getmembers():
            handle = src.extractfile(member) if member.isfile() else None
            members.append((member, None if handle is None else handle.read()))
    top = members[0][0].name.split("/")[0]
    present = {member.name for member, _ in members}
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as dst:
        for member, data in members:
            dst.addfile(member, None if data is None else io.BytesIO(data))
        for path in files:
            arcname = f"{top}/{path.relative_to(ROOT).as_posix()}"
            if arcname not in present:
                dst.add(path, arcname=arcname)


if __name__ == "__main__":
    for path in generate_stubs():
        print(path.relative_to(ROOT))
    sys.exit(0)
