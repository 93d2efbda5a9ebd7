"""Where a ``--preset paper`` run departs from the paper's setting, in words.

Im & Li (ICML 2024) Sec. 5: "All of the following experiments are conducted with full
fine-tuning on the Llama-2-7B model"; App. C: LoRA "on the Llama-2-7B model"; Sec. 5.4:
"the same set of experiments on the Mistral-7B model". Both are base models prompted with
raw text. A paper preset run on another model (the embedded SmolLM2-135M-Instruct by
default) or on the bundled demo data measures the paper's design, not its setting; the
harness logs these warnings and adds them to the run's report.
"""

from __future__ import annotations

from prefdyn.experiments.config import ExperimentConfig

PRESET_MODEL = {"paper": "Llama-2-7B", "mistral": "Mistral-7B", "app-d-beta0.001": "Llama-2-7B",
                "app-d-beta0.1": "Llama-2-7B", "app-d-beta1": "Llama-2-7B"}
"""The presets that carry a paper's setting, and the model that setting is for."""

INSTRUCT_NOTE = (
    "the embedded SmolLM2-135M-Instruct is an Instruct model, tuned with a chat format: "
    "its Yes/No answers to the raw prompt (no chat template, as the paper's base models get) "
    "are already shaped by instruction tuning and the raw text is off its chat format, so D, "
    "the initial losses and the speed of learning differ from a base model like Llama-2-7B's")


IM_LI_LM = ("lm distinguishability", "lm priority", "lm distribution", "lm misalignment", "lm hh-rlhf")
"""The Im & Li LM experiments (Sec. 5, App. B, C) whose paper preset names these models."""


def paper_setting_warnings(spec_name: str, cfg: ExperimentConfig) -> list[str]:
    """Warnings for a ``paper``-preset run of an Im & Li LM experiment whose model or data is
    not the paper's (empty for other presets and experiments)."""
    if cfg.preset not in PRESET_MODEL or spec_name not in IM_LI_LM:
        return []
    persona = spec_name != "lm hh-rlhf"
    out = []
    name, preset, model = cfg.model.name, cfg.preset, PRESET_MODEL[cfg.preset]
    if name is None:
        out.append(f"--preset {preset} on a model that is not the paper's ({model}): {INSTRUCT_NOTE}.")
    elif model.lower() not in name.lower() or "chat" in name.lower() or "instruct" in name.lower():
        out.append(f"--preset {preset} on {name}, not the paper's base model for it ({model}): the "
                   "numbers test the paper's design, not its setting.")
    if persona and cfg.data.path is None:
        out.append(f"--preset {preset} on prefdyn's bundled demo data, not Anthropic's persona "
                   "files: give --data ../shared/data/persona.")
    return out
