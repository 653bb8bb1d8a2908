"""The wheels a bundle ships, and why each is there.

The kernel's inference path imports numpy, cv2, torch (Kaggle's image has them), this kit,
facenet-pytorch (the MTCNN detector) and each bundled model's own library
(``dfdc.models.model_requirements(arch)``). ``plan_wheels`` ships, with a reason each:

- ``dfdc-kit`` (built from the checkout), always;
- ``facenet-pytorch`` and every model's requirements at their ``requirements.txt`` pins:
  "not in Kaggle's image", or "pinned" when the image has its own copy (the kernel installs
  the wheels first on ``sys.path``, so the models run the versions they were trained with);
- the dependencies of those (from this environment's installed metadata) that neither
  ``kernels/kaggle-image.txt`` nor its dependencies provide, at the installed version.

``fetch_wheels`` takes them from a cache folder or builds them with ``pip wheel --no-deps``
(pure-Python wheels where the project publishes none, e.g. efficientnet-pytorch's sdist).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from dfdc.config import ModelConfig
from dfdc.io import TEMP_MARK
from dfdc.kaggle.common import DETECTOR_DIST, IMAGE_LIST, PACKAGE_DIST, KernelError, norm, run_command


@dataclass(frozen=True)
class WheelPlan:
    """One distribution to ship: its version and why."""

    dist: str  # normalised name
    version: str
    reason: str


def requirement_pins(requirements: Path) -> dict[str, str]:
    """``name -> version`` of the ``name==version`` lines of requirements.txt."""
    pins: dict[str, str] = {}
    for line in Path(requirements).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[norm(name)] = version.strip()
    return pins


def image_pins(path: Path) -> dict[str, str]:
    """The distributions of ``kernels/kaggle-image.txt`` (normalised) and the version each
    ``name==version`` line gives Kaggle's image ("" where a line names no version)."""
    if not Path(path).is_file():
        raise KernelError(f"{path} not found: it declares what Kaggle's image provides; restore it from the repository")
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[norm(name.strip())] = version.strip()
    return pins


def image_list(path: Path) -> list[str]:
    """The distributions of ``kernels/kaggle-image.txt`` (normalised)."""
    return list(image_pins(path))


def _requires(dist: str) -> list[str]:
    """Installed runtime dependencies of ``dist`` here (markers evaluated, extras left out)."""
    from packaging.requirements import Requirement

    try:
        reqs = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return []
    out = []
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        out.append(norm(req.name))
    return out


def closure(names: list[str]) -> list[str]:
    """``names`` and everything they depend on that is installed here, in discovery order."""
    seen: dict[str, None] = {}
    todo = list(names)
    while todo:
        name = norm(todo.pop(0))
        if name in seen:
            continue
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = None
        todo.extend(_requires(name))
    return list(seen)


def plan_wheels(archs: list[str | ModelConfig], root: Path) -> list[WheelPlan]:
    """What a bundle for models of ``archs`` (names, or model sections: a model over a
    backbone needs the backbone's library too) ships, and why (module docstring)."""
    from dfdc.models import model_requirements

    pins = requirement_pins(root / "requirements.txt")
    image = image_list(root / IMAGE_LIST)
    provided = set(closure(image)) | set(image)
    plan: dict[str, WheelPlan] = {}
    whys: dict[str, list[str]] = {}  # each reason once: five folds of one architecture need its library once

    def pinned(dist: str, why: str) -> None:
        if why in whys.setdefault(dist, []):
            return
        whys[dist].append(why)
        if dist in plan:
            plan[dist] = WheelPlan(dist, plan[dist].version, plan[dist].reason + f"; {why}")
            return
        if dist not in pins:
            raise KernelError(f"{root / 'requirements.txt'} does not pin {dist}==VERSION ({why}); add the pin")
        where = ("in Kaggle's image too, pinned to the version the models were trained with"
                 if dist in provided else "not in Kaggle's image")
        plan[dist] = WheelPlan(dist, pins[dist], f"{why} ({where})")

    plan[PACKAGE_DIST] = WheelPlan(PACKAGE_DIST, metadata.version(PACKAGE_DIST) if _installed(PACKAGE_DIST) else "",
                                   "the kit's inference code (dfdc.predict, dfdc.faces, dfdc.models)")
    pinned(norm(DETECTOR_DIST), "the MTCNN face detector (dfdc.faces)")
    for model in archs:
        name = model if isinstance(model, str) else model.arch
        for dist in model_requirements(model):
            pinned(norm(dist), f"the library of model {name}")
    for dist in list(plan):
        if dist == PACKAGE_DIST:
            continue
        for dep in closure(_requires(dist)):
            if dep not in provided and dep not in plan:
                plan[dep] = WheelPlan(dep, pins.get(dep) or metadata.version(dep),
                                      f"a dependency of {dist} (not in Kaggle's image)")
    return list(plan.values())


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def fetch_wheel(plan: WheelPlan, cache: Path, timeout: float) -> Path:
    """The wheel of ``plan`` from ``cache``, else built/downloaded into it by pip."""
    cache.mkdir(parents=True, exist_ok=True)
    prefix = plan.dist.replace("-", "_")
    found = [w for w in sorted(cache.glob("*.whl")) if norm(w.name.split("-", 1)[0]) == plan.dist
             and w.name.split("-")[1] == plan.version]
    if found:
        return found[-1]
    fetch = cache / f".fetch{TEMP_MARK}{os.getpid()}"  # a killed fetch never leaves half a wheel
    shutil.rmtree(fetch, ignore_errors=True)
    result = run_command(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
         "-q", "-w", str(fetch), f"{plan.dist}=={plan.version}"],
        timeout=timeout, what=f"pip wheel {plan.dist}",
    )
    for wheel in fetch.glob("*.whl"):
        os.replace(wheel, cache / wheel.name)
    shutil.rmtree(fetch, ignore_errors=True)
    found = [w for w in sorted(cache.glob("*.whl")) if norm(w.name.split("-", 1)[0]) == plan.dist
             and w.name.split("-")[1] == plan.version]
    if result.returncode != 0 or not found:
        raise KernelError(
            f"cannot get a wheel of {plan.dist}=={plan.version} (pip said: {result.stderr.strip()[-500:]}); "
            f"check the package index is reachable, or put the wheel into {cache} (name {prefix}-{plan.version}-*.whl)"
        )
    return found[-1]


def package_wheel(root: Path, out: Path, timeout: float) -> Path:
    """Wheel of this package, built from a clean copy of the sources (no stale build/ files)."""
    out.mkdir(parents=True, exist_ok=True)
    source = out / f".source{TEMP_MARK}{os.getpid()}"
    shutil.rmtree(source, ignore_errors=True)
    try:
        source.mkdir()
        for name in ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "README.md"):
            if (root / name).is_file():
                shutil.copyfile(root / name, source / name)
        shutil.copytree(
            root / "dfdc", source / "dfdc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", f"*{TEMP_MARK}*")
        )
        result = run_command(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--disable-pip-version-check", "-q", "-w", str(out), str(source)],
            timeout=timeout, what="pip wheel dfdc-kit",
        )
    finally:
        shutil.rmtree(source, ignore_errors=True)
    wheels = sorted(out.glob("dfdc_kit-*.whl"))
    if result.returncode != 0 or not wheels:
        raise KernelError(f"building the dfdc-kit wheel from {root} failed: {result.stderr.strip()[-800:]}")
    return wheels[-1]


def wheel_modules(wheel: Path) -> list[str]:
    """The top-level modules a wheel installs (``top_level.txt``, else its RECORD's folders)."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        if top:
            return sorted({m.strip() for m in archive.read(top[0]).decode().splitlines() if m.strip()})
    mods = set()
    for name in names:
        first = name.split("/", 1)[0]
        if first.endswith((".dist-info", ".data")):
            continue
        mods.add(first[:-3] if first.endswith(".py") else first)
    return sorted(mods)
