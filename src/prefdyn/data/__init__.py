"""Data: persona behaviors, preference pairs, behavior tasks, label flips, mixtures and
generation tasks (prompt + reference, for RL fine-tuning)."""

from prefdyn.data.demo import demo_data_dir, load_demo
from prefdyn.data.filtering import filter_pairs, write_pairs
from prefdyn.data.generation import GenerationTask, available_tasks, load_task, register_task
from prefdyn.data.pairs import detect_format, load_pairs, split_hh
from prefdyn.data.persona import behavior_name, list_behaviors, load_persona_dir, load_persona_file
from prefdyn.data.problems import Problem, find_problems
from prefdyn.data.sources import PairsData, detect_source, load_source
from prefdyn.data.records import PersonaItem, PreferencePair
from prefdyn.data.tasks import (
    DEFAULT_TEMPLATE,
    BehaviorData,
    TaskConfig,
    build_behavior,
    build_behaviors,
    flip,
    mix_behaviors,
    render_prompt,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "BehaviorData",
    "GenerationTask",
    "PairsData",
    "PersonaItem",
    "PreferencePair",
    "Problem",
    "TaskConfig",
    "available_tasks",
    "behavior_name",
    "build_behavior",
    "build_behaviors",
    "demo_data_dir",
    "detect_format",
    "detect_source",
    "filter_pairs",
    "find_problems",
    "flip",
    "list_behaviors",
    "load_demo",
    "load_pairs",
    "load_task",
    "load_persona_dir",
    "load_persona_file",
    "load_source",
    "mix_behaviors",
    "register_task",
    "render_prompt",
    "split_hh",
    "write_pairs",
]
