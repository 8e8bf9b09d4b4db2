"""The public surface: a sorted, complete __all__ and a __version__ matching the metadata."""

from __future__ import annotations

import importlib.metadata
import inspect

import dripcore


def test_all_is_sorted_and_unique() -> None:
    assert list(dripcore.__all__) == sorted(set(dripcore.__all__))


def test_all_matches_the_public_names() -> None:
    public = {
        name
        for name, value in vars(dripcore).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name not in {"annotations"}
    }
    assert set(dripcore.__all__) - {"__version__"} == public


def test_every_public_name_has_a_docstring() -> None:
    for name in dripcore.__all__:
        value = getattr(dripcore, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"


def test_version_matches_installed_metadata() -> None:
    assert dripcore.__version__ == importlib.metadata.version("dripcore")


def test_design_public_names_are_exported() -> None:
    """The names DESIGN.md marks public."""
    for name in [
        "Delay", "Step", "Trigger", "TriggerType", "Sequence", "SequenceStatus", "Enrollment",
        "EnrollmentStatus", "ExitReason", "Contact", "Subscribed", "StepSent", "StepFailed",
        "StepSkipped", "Completed", "Cancelled", "advance", "Advance", "DripcoreError",
        "make_converter",
    ]:  # fmt: skip
        assert hasattr(dripcore, name), name


def test_package_ships_py_typed() -> None:
    files = importlib.metadata.files("dripcore") or []
    assert any(str(f).endswith("py.typed") for f in files) or (
        __import__("pathlib").Path(dripcore.__file__).with_name("py.typed").exists()
    )
