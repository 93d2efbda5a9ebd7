"""What is recorded while training: callbacks, metrics, history, run folders."""

from prefdyn.tracking.boundary import BoundaryRecorder
from prefdyn.tracking.callbacks import Callback, CallbackList
from prefdyn.tracking.concepts import ConceptTracker, read_concepts, read_pair_logps
from prefdyn.tracking.displacement import DisplacementMonitor
from prefdyn.tracking.evaluate import PairScores, answer_logprobs, pair_metrics, score_pairs
from prefdyn.tracking.history import History
from prefdyn.tracking.last_layer import LastLayerTracker, class_mean_difference
from prefdyn.tracking.lm_metrics import LMEvalTracker
from prefdyn.tracking.run_dir import RunDir, read_metrics

__all__ = ["BoundaryRecorder", "Callback", "CallbackList", "ConceptTracker", "DisplacementMonitor", "History", "PairScores", "answer_logprobs",
           "pair_metrics", "score_pairs", "LastLayerTracker", "LMEvalTracker", "RunDir",
           "class_mean_difference", "read_concepts", "read_metrics", "read_pair_logps"]
