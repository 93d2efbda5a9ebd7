"""A diagnosis checked against a short TRL LoRA DPO run on the HH-RLHF file.

    # 1. the diagnosis (prefdyn diagnose), or --hand-made below
    prefdyn diagnose ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz --out runs/hh-diag
    # 2. a short LoRA DPO run in TRL's DPOTrainer with prefdyn's callback
    python scripts/trl_hh_demo.py --diagnosis runs/hh-diag/diagnosis.json --out runs/hh-trl
    # 3. the predictions beside what happened
    prefdyn compare runs/hh-diag/diagnosis.json runs/hh-trl

The run trains on the first ``--pairs`` usable pairs of the file (both responses
non-empty), each row carrying its record's index in the load order ``prefdyn diagnose``
numbers them (the callback's ``index_column``), with the embedded SmolLM2-135M-Instruct
(or ``--model``).

``--hand-made`` writes a stand-in diagnosis.json instead of step 1, so the loop runs
where ``prefdyn diagnose`` is not available: the concepts are the sign of the length
difference of the two responses (chosen longer / shorter), the predicted order is the
hypothesis that DPO first learns the pairs whose chosen response is the longer one, and
the risky pairs are the top 10% by length-normalized CHES (Razin et al. 2024; prefdyn's
:mod:`prefdyn.diagnostics.ches`). It is a demonstration of the plumbing, not a diagnosis.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def load_records(path: Path) -> list:
    """Every record of ``path`` as a pair, in the load order ``prefdyn diagnose`` numbers
    them (record i is pair i; None where a record has no pair)."""
    from prefdyn.data import load_source  # prefdyn diagnose's loader: keeps bad records

    return list(load_source(path).pairs)


def hand_made_diagnosis(loaded, records: list, train: list[int], path: Path, data: Path) -> Path:
    """The stand-in diagnosis of the module docstring, in notes/diagnosis_schema.md's format;
    CHES of the ``train`` pairs only, null for the rest."""
    import torch

    from prefdyn.diagnostics.ches import cached_pair_hidden_sums, ches_from_sums

    longer = [int(p is not None and len(p.chosen) <= len(p.rejected)) for p in records]  # 0: chosen longer
    scores = ches_from_sums(*cached_pair_hidden_sums(loaded, [records[i] for i in train], batch_size=8,
                                                     progress=True))
    norm = scores["ches_normalized"].double()
    threshold = float(torch.quantile(norm, 0.9))
    ches, ches_norm = [None] * len(records), [None] * len(records)
    for i, c, n in zip(train, scores["ches"].tolist(), norm.tolist()):
        ches[i], ches_norm[i] = c, n
    names = ["chosen longer", "chosen shorter"]
    path.write_text(json.dumps({
        "schema": "prefdyn.diagnosis/1",
        "data": {"source": str(data), "format": "hh", "n_pairs": len(records), "fingerprint": "hand-made"},
        "model": loaded.name,
        "concepts": {"source": "column:length_sign", "k": 2, "assignment": longer,
                     "items": [{"name": n, "n": longer.count(i), "distinguishability": None,
                                "priority": None, "predicted_rank": i + 1, "starved": False}
                               for i, n in enumerate(names)]},
        "pairs": {"ches": ches, "ches_norm": ches_norm, "risk_threshold": threshold,
                  "risky": [i for i, v in zip(train, norm.tolist()) if v >= threshold]},
        "problems": [], "recommendations": [], "hand_made": True}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--diagnosis", type=Path, help="diagnosis.json of prefdyn diagnose")
    parser.add_argument("--hand-made", action="store_true", help="write a stand-in diagnosis (see above)")
    parser.add_argument("--out", type=Path, default=Path("runs/hh-trl"))
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--pairs", type=int, default=64, help="train on the first N pairs")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--probe", type=int, default=32)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384, help="TRL's max_length (probe too)")
    args = parser.parse_args()
    if (args.diagnosis is None) == (not args.hand_made):
        parser.error("give --diagnosis or --hand-made")

    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from prefdyn.integrations.trl import DPODynamicsCallback
    from prefdyn.models import load_model

    records = load_records(args.data)
    # DPOTrainer needs two non-empty responses; each row keeps its record's index.
    train = [i for i, p in enumerate(records) if p is not None and p.chosen.strip() and p.rejected.strip()]
    train = train[:args.pairs]
    loaded = load_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    diagnosis = args.diagnosis or hand_made_diagnosis(loaded, records, train, args.out / "diagnosis.json",
                                                      args.data)
    rows = [{"prompt": records[i].prompt, "chosen": records[i].chosen, "rejected": records[i].rejected,
             "pair": i} for i in train]
    config = DPOConfig(output_dir=str(args.out / "trl"), per_device_train_batch_size=4, max_steps=args.steps,
                       learning_rate=5e-4, beta=0.1, max_length=args.max_length, report_to="none", use_cpu=True,
                       save_strategy="no", logging_steps=args.every, seed=0)
    trainer = DPOTrainer(model=loaded.model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=loaded.tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05,
                                                target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    trainer.add_callback(DPODynamicsCallback(trainer, args.out, concepts=str(diagnosis), index_column="pair",
                                             probe=args.probe, every=args.every))
    trainer.train()
    print(f"now: prefdyn compare {diagnosis} {args.out}")


if __name__ == "__main__":
    main()
