import pytest

from prefdyn.data import TaskConfig
from prefdyn.experiments import DataConfig, ModelConfig, prepare_workspace

from tests._tiny import tiny_loaded


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory):
    """The bundled demo behaviors (20 statements each) seen by a tiny random model."""
    cache = tmp_path_factory.mktemp("cache")
    return prepare_workspace(ModelConfig(cache_dir=str(cache)), DataConfig(),
                             TaskConfig(n_per_behavior=20, seed=0), progress=False,
                             loaded=tiny_loaded())
