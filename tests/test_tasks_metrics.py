"""The paper's metrics on cases worked out by hand, and the chunked ReID ranking against a plain loop."""
import math

import pytest
import torch

from timm_stra.tasks.metrics import reid_cmc_map, top1_accuracy, verification_accuracy


def _angles(degrees):
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_reid_hand_worked_case():
    # gallery ranked by angle from the queries (all at 0 degrees)
    g_pids = torch.tensor([1, 2, 1, -1, 0, 1, 3])
    g_cams = torch.tensor([0, 1, 1, 2, 1, 2, 0])
    gallery = _angles([0, 10, 20, 30, 40, 50, 60])
    q_pids = torch.tensor([1, 3, 1])
    q_cams = torch.tensor([0, 0, 2])
    queries = _angles([0, 0, 0])
    # query 0 (id 1, cam 0): g0 same camera -> dropped, junk g3 dropped; kept order x, OK, x, OK, x
    #   -> first match at rank 2, AP = (1/2 + 2/4) / 2 = 1/2
    # query 1 (id 3, cam 0): its only match g6 has its camera -> skipped
    # query 2 (id 1, cam 2): g5 dropped; kept order OK, x, OK, x, x -> rank 1, AP = (1 + 2/3) / 2 = 5/6
    out = reid_cmc_map(queries, gallery, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    assert out['num_valid_queries'] == 2
    assert out['mAP'] == pytest.approx((1 / 2 + 5 / 6) / 2)
    assert out['cmc'] == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0])
    # a curve longer than the gallery (7 images) has max_rank entries, 1 beyond (it stopped at 7)
    out = reid_cmc_map(queries, gallery, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    assert out['cmc'] == pytest.approx([0.5] + [1.0] * 9)


def _reid_loop(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank):
    """One query at a time, as the Market-1501 protocol reads."""
    qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    aps, cmc, valid = [], torch.zeros(max_rank), 0
    for i in range(len(qf)):
        order = torch.argsort(((gf - qf[i]) ** 2).sum(1), stable=True).tolist()
        kept = [j for j in order if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        hits = [int(g_pids[j] == q_pids[i]) for j in kept]
        if not any(hits):
            continue
        valid += 1
        cmc[hits.index(1):] += 1
        found, precisions = 0, []
        for rank, h in enumerate(hits, 1):
            if h:
                found += 1
                precisions.append(found / rank)
        aps.append(sum(precisions) / len(precisions))
    return sum(aps) / valid, (cmc / valid).tolist()


def test_reid_chunked_matches_per_query_loop():
    gen = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(37, 16, generator=gen), torch.randn(120, 16, generator=gen)
    q_pids, g_pids = torch.randint(0, 10, (37,), generator=gen), torch.randint(-1, 10, (120,), generator=gen)
    q_cams, g_cams = torch.randint(0, 3, (37,), generator=gen), torch.randint(0, 3, (120,), generator=gen)
    expected_map, expected_cmc = _reid_loop(qf, gf, q_pids, g_pids, q_cams, g_cams, 10)
    for chunk in (1, 7, 256):
        out = reid_cmc_map(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=10, chunk_size=chunk)
        assert out['mAP'] == pytest.approx(expected_map, abs=1e-6)
        assert out['cmc'] == pytest.approx(expected_cmc, abs=1e-6)


def test_reid_without_any_valid_query_is_an_error():
    f = torch.eye(2)
    with pytest.raises(ValueError, match='true match'):
        reid_cmc_map(f, f, torch.tensor([1, 2]), torch.tensor([1, 2]), torch.tensor([0, 0]), torch.tensor([0, 0]))


def _pairs_at(squared_distances):
    d = torch.tensor(squared_distances, dtype=torch.float64)
    theta = torch.acos(1 - d / 2)  # |a - b|^2 = 2 - 2 cos(theta) for unit vectors
    a = torch.tensor([[1., 0.]], dtype=torch.float64).expand(len(d), 2)
    return a, torch.stack([theta.cos(), theta.sin()], dim=1)


def test_reid_inputs_that_do_not_fit_together_are_errors():
    feats, ids, cams = torch.randn(4, 8), torch.arange(4), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match='5 gallery images but identities of shape \\(4,\\)'):
        reid_cmc_map(feats, torch.randn(5, 8), ids, ids, cams, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match='4 query images but cameras of shape \\(3,\\)'):
        reid_cmc_map(feats, feats, ids, ids, cams[:3], cams)
    with pytest.raises(ValueError, match='query features are 8-D, gallery features 6-D'):
        reid_cmc_map(feats, torch.randn(4, 6), ids, ids, cams, cams)
    with pytest.raises(ValueError, match=r'query features must be \(images, dim\)'):
        reid_cmc_map(torch.randn(4, 8, 1), feats, ids, ids, cams, cams)


def test_verification_hand_worked_case():
    # 20 pairs: even ones the same person at squared distance 0.455, odd ones different at 1.555,
    # except pair 3, a different pair at 0.255. Folds are pairs (0,1), (2,3), ...
    dists = [0.455 if j % 2 == 0 else 1.555 for j in range(20)]
    dists[3] = 0.255
    a, b = _pairs_at(dists)
    issame = torch.tensor([j % 2 == 0 for j in range(20)])
    out = verification_accuracy(a, b, issame)
    # every fold's best (first) threshold is 0.46; fold (2,3) gets 1/2 right, the nine others 2/2
    assert out['threshold'] == pytest.approx(0.46)
    assert out['accuracy'] == pytest.approx(0.95)
    assert out['accuracy_std'] == pytest.approx(0.15)


def test_verification_needs_as_many_pairs_as_folds():
    a, b = _pairs_at([0.1] * 5)
    with pytest.raises(ValueError, match='folds'):
        verification_accuracy(a, b, torch.ones(5, dtype=torch.bool))


def test_top1_accuracy():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert top1_accuracy(logits, torch.tensor([1, 0, 0, 1])) == pytest.approx(0.5)


def test_top1_accuracy_refuses_labels_that_do_not_fit_the_logits():
    logits = torch.eye(4)
    with pytest.raises(ValueError, match=r'labels of shape \(4, 1\)'):  # broadcasting would give 0.25
        top1_accuracy(logits, torch.arange(4)[:, None])
    with pytest.raises(ValueError, match=r'labels of shape \(1,\)'):
        top1_accuracy(logits, torch.tensor([0]))


def test_verification_refuses_sides_that_do_not_pair_up():
    a, b = _pairs_at([0.1] * 20)
    issame = torch.ones(20, dtype=torch.bool)
    with pytest.raises(ValueError, match=r'shapes \(20, 2\) and \(1, 2\)'):  # broadcasting would score 20 pairs
        verification_accuracy(a, b[:1], issame)
    with pytest.raises(ValueError, match=r'issame of shape \(19,\)'):
        verification_accuracy(a, b, issame[:19])


def test_verification_threshold_of_a_fold_is_chosen_without_its_own_pairs():
    """SPEC 5: each fold is scored at the threshold chosen on the other nine. Fold (0, 1) holds two same pairs at
    1.005, which only a threshold above it gets right; the other pairs are same at 0.455, different at 1.555."""
    dists = [0.455 if j % 2 == 0 else 1.555 for j in range(20)]
    dists[0] = dists[1] = 1.005
    a, b = _pairs_at(dists)
    issame = torch.tensor([j % 2 == 0 for j in range(20)])
    issame[1] = True
    out = verification_accuracy(a, b, issame)
    # fold (0, 1): chosen on the others, 0.46, which gets both its pairs wrong; every other fold: 1.01 (the first
    # threshold right on fold (0, 1) too), all right. Chosen on all pairs, every fold would get 1.01 and 2/2.
    assert out['accuracy'] == pytest.approx(0.9)
    assert out['threshold'] == pytest.approx((0.46 + 9 * 1.01) / 10)


def test_verification_calls_same_only_below_the_threshold():
    """A pair is 'same' when its distance is strictly below the threshold (insightface's less-than): a different
    pair of identical features is right at threshold 0, not wrong."""
    a, b = _pairs_at([0.] * 20)
    out = verification_accuracy(a, b, torch.zeros(20, dtype=torch.bool),
                                thresholds=torch.tensor([0., 1.], dtype=torch.float64))
    assert out['accuracy'] == 1.0 and out['threshold'] == 0.0


def test_verification_default_thresholds_reach_up_to_4():
    """SPEC 5: thresholds over [0, 4) in steps of 0.01, not [0, 2): same pairs at 2.5, different ones at 3.5."""
    a, b = _pairs_at([2.5 if j % 2 == 0 else 3.5 for j in range(20)])
    out = verification_accuracy(a, b, torch.tensor([j % 2 == 0 for j in range(20)]))
    assert out['accuracy'] == 1.0 and out['threshold'] == pytest.approx(2.51)


def test_verification_normalises_the_features():
    """The caller's features are L2-normalised here: scaling either side changes nothing."""
    dists = [0.455 if j % 2 == 0 else 1.555 for j in range(20)]
    dists[3] = 0.255
    a, b = _pairs_at(dists)
    issame = torch.tensor([j % 2 == 0 for j in range(20)])
    scale = torch.linspace(0.1, 30, 20, dtype=torch.float64)[:, None]
    out = verification_accuracy(a * scale, b * 7, issame)
    assert out == pytest.approx(verification_accuracy(a, b, issame))
    assert out['threshold'] == pytest.approx(0.46) and out['accuracy'] == pytest.approx(0.95)


def test_reid_ties_are_ranked_in_gallery_order():
    """Gallery images at the same distance keep their gallery order (a stable sort): the same features always
    score the same. Twenty identical gallery images, a distractor first and the true match second: rank 2. (An
    unstable sort of 20 ties puts the match elsewhere.)"""
    gallery = _angles([90] * 20)
    g_pids = torch.tensor([0, 1] + list(range(2, 20)))
    g_cams = torch.ones(20, dtype=torch.long)
    out = reid_cmc_map(_angles([0]), gallery, torch.tensor([1]), g_pids, torch.tensor([0]), g_cams, max_rank=3)
    assert out['cmc'] == [0.0, 1.0, 1.0]
    assert out['mAP'] == pytest.approx(0.5)


def test_top1_accuracy_of_an_empty_set_is_an_error():
    """Not a NaN that would go into the results unnoticed."""
    with pytest.raises(ValueError, match='empty set'):
        top1_accuracy(torch.zeros(0, 7), torch.zeros(0, dtype=torch.long))
