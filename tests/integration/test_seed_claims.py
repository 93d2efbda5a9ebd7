"""Im & Li (ICML 2024) on the real embedded model and real persona data.

6 behaviors x 100 statements (fixed seed) from ../shared/data/persona, last-layer
DPO from SmolLM2-135M-Instruct's own unembedding. The paper's claim, in the
direction it states: more distinguishable behaviors lose DPO loss faster.
"""

from pathlib import Path

import pytest
import torch

from prefdyn.data import TaskConfig
from prefdyn.experiments import DataConfig, ModelConfig, prepare_workspace, run_distinguishability
from prefdyn.models import load_model
from prefdyn.policies import LastLayerPolicy
from prefdyn.training import TrainConfig

pytestmark = pytest.mark.integration

PERSONA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "persona"
BEHAVIORS = ["agreeableness", "anti-immigration", "believes-life-has-no-meaning",
             "desire-for-acquiring-power", "interest-in-math", "risk-seeking"]


@pytest.fixture(scope="module")
def loaded():
    return load_model()


@pytest.fixture(scope="module")
def workspace(loaded):
    if not PERSONA.is_dir():
        pytest.skip(f"real persona data not found at {PERSONA}")
    return prepare_workspace(ModelConfig(), DataConfig(str(PERSONA), BEHAVIORS),
                             TaskConfig(n_per_behavior=100, seed=0), progress=False, loaded=loaded)


def test_last_layer_log_probs_equal_the_model(workspace, loaded):
    # The last-layer policy (answer rows + frozen rest) reproduces the full model's
    # log-probabilities of the answers at the prompt's last position.
    b = workspace.behaviors[0]
    tok = loaded.tokenizer
    with torch.no_grad():  # one prompt at a time: no padding involved
        logits = torch.stack([
            loaded.model(**tok(p, return_tensors="pt", add_special_tokens=False)).logits[0, -1]
            for p in b.prompts[:3]]).float()
    full = torch.log_softmax(logits, -1)[:, workspace.answer_ids]
    data = workspace.problems([0], split="all")
    yes, no = LastLayerPolicy(workspace.W_answers, 1).answer_logps(data)
    torch.testing.assert_close(yes[0, :3], full[:, 0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(no[0, :3], full[:, 1], atol=1e-3, rtol=1e-3)


def test_more_distinguishable_behaviors_learn_faster(workspace):
    res = run_distinguishability(workspace, TrainConfig(steps=300, log_every=10, eval_every=50))
    s = res.summary
    assert s["spearman_D_loss_decrease"] > 0.5, s["D"]
    assert s["spearman_D_weight_slope"] > 0.5
    assert all(v > 0 for v in s["loss_decrease"].values())
