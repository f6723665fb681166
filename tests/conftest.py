"""Shared fixtures: paths into the read-only reference data at <repo>/../shared."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared"
REFERENCE = SHARED / "reference" / "gpt_sovits_v2"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("reference data ../shared is absent")
    return SHARED


@pytest.fixture(scope="session")
def tiny_ckpt_dir(shared_dir) -> Path:
    path = shared_dir / "reference" / "gpt_sovits_v2" / "checkpoints" / "tiny_seed1234"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def golden_dir(shared_dir) -> Path:
    path = shared_dir / "reference" / "gpt_sovits_v2" / "golden" / "tiny_seed1234_A"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path
