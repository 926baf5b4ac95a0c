"""The rows of the paper's Tables 1 and 2 (SPEC 3) as ``timm.create_model`` calls, with the printed values.

Paper values are kept as the strings the paper prints, so that "reproduced to its
printed precision" means: our number, formatted with as many decimals, is the same string.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple


@dataclass(frozen=True)
class AblationRow:
    """One model of the ablation table.

    Attributes:
        label: the paper's row name.
        tables: which of the paper's tables list it ('1', '2', '1, 2'; '' for our extra rows).
        model: registered model name.
        kwargs: ablation knobs passed to ``timm.create_model``.
        params_m: the paper's parameters in millions, as printed (None where it prints none).
        gmacs: the paper's "FLOPs" (multiply-accumulates) in G, as printed.
        map, rank1: the paper's Market-1501 accuracy, for reference (not reproduced here).
    """
    label: str
    tables: str
    model: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    params_m: Optional[str] = None
    gmacs: Optional[str] = None
    map: Optional[str] = None
    rank1: Optional[str] = None


def _reid(local_op: str, mode: str) -> Tuple[str, Dict[str, str]]:
    return 'stra_resnet50_reid', dict(local_op=local_op, mode=mode)


PAPER_ROWS: Tuple[AblationRow, ...] = (
    AblationRow('Conv (ResNet-50)', '1, 2', 'resnet50_reid', {}, '24.6', '4.05', '77.1', '90.6'),
    AblationRow('SASA', '2', *_reid('sasa', 'none'), '17.8', '3.19', '79.5', '92.3'),
    AblationRow('Conv + Mode', '2', *_reid('conv', 'full'), '24.6', '4.06', '82.1', '93.2'),
    AblationRow('Group Conv + Mode', '2', *_reid('group_conv', 'full'), '18.4', '3.26', '82.8', '93.3'),
    AblationRow('SASA + Mode', '2', *_reid('sasa', 'full'), '17.8', '3.19', '83.0', '93.6'),
    AblationRow('Local + Mode (StRA)', '1, 2', *_reid('local', 'full'), '17.6', '3.17', '84.1', '93.8'),
    AblationRow('Local attention only', '1', *_reid('local', 'none'), map='79.9', rank1='92.3'),
    AblationRow('Local + Mode w/o interaction', '1', *_reid('local', 'no_interaction'), map='83.3', rank1='93.4'),
)

EXTRA_ROWS: Tuple[AblationRow, ...] = (
    AblationRow('Face: ResNet-50 twin', '', 'resnet50_face'),
    AblationRow('Face: StRA', '', 'stra_resnet50_face'),
    AblationRow('FER: ResNet-50 twin', '', 'resnet50_fer'),
    AblationRow('FER: StRA', '', 'stra_resnet50_fer'),
)
