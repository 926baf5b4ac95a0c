"""The paper's evaluation metrics (SPEC 5)."""
from .classification import top1_accuracy
from .face_verification import verification_accuracy
from .reid import reid_cmc_map
