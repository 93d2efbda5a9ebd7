"""prefdyn's dynamics inside other libraries' trainers.

``prefdyn.integrations.trl``: ``transformers.TrainerCallback``s for TRL's ``DPOTrainer``
and ``GRPOTrainer``. Nothing here is imported by ``import prefdyn``, and none of it
imports TRL: the callbacks read what the trainer object already holds.
"""
