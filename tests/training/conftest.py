import pytest


@pytest.fixture(autouse=True)
def _private_cache(request, tmp_path, monkeypatch):
    """Unit tests cache (reference log-probs, ...) in a per-test folder. Integration
    tests keep the real cache: it holds the embedded model, converted once."""
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv("PREFDYN_CACHE", str(tmp_path / "cache"))
