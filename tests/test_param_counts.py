"""Exact architecture: parameter counts of the authors' released ReID models."""
import timm

import timm_stra  # noqa: F401


def params_without_classifier(model) -> int:
    classifier = {id(p) for p in model.get_classifier().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in classifier)


def test_stra_reid_matches_official_count():
    assert params_without_classifier(timm.create_model('stra_resnet50_reid', num_classes=751)) == 17_621_560


def test_resnet_twin_matches_official_count():
    assert params_without_classifier(timm.create_model('resnet50_reid', num_classes=751)) == 24_557_632


def test_classifier_is_the_751_id_linear():
    model = timm.create_model('stra_resnet50_reid', num_classes=751)
    assert sum(p.numel() for p in model.get_classifier().parameters()) == 512 * 751 + 751
