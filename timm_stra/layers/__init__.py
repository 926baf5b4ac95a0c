"""StRA building blocks: local attention, mode attention, the diversity term and the ablation operators."""
from .diversity import DiversityRecorder, mask_diversity
from .local_attn import LocalAttention
from .local_attn_ref import LocalAttentionReference, local_attention_reference
from .mode_attn import ModeAttention
from .mode_attn_ref import ModeAttentionReference
from .sasa import SelfAttention2d
from .score_branch import ScoreBranch
from .stra_attn import LOCAL_OPS, MODES, StRAttention, create_local_op, set_triton
