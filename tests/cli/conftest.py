from tests.experiments.conftest import tiny_model_dir  # noqa: F401
