"""Person ReID ranking metrics: CMC and mAP, single query, same-camera rule (SPEC 5).

For each query the gallery is ranked by Euclidean distance between L2-normalised
embeddings; gallery images of the query's identity taken by the query's camera are
discarded, as are junk images (identity -1); a query with no remaining true match is
skipped. Queries are processed in chunks, so memory is O(chunk x gallery): a
3,368 x 19,732 evaluation with chunks of 256 needs a few hundred MB.
"""
from typing import Dict

import torch
import torch.nn.functional as F


def _check_shapes(split: str, feats: torch.Tensor, pids: torch.Tensor, camids: torch.Tensor) -> None:
    if feats.dim() != 2:
        raise ValueError(f'reid_cmc_map: {split} features must be (images, dim), got shape {tuple(feats.shape)}.')
    for name, values in (('identities', pids), ('cameras', camids)):
        if values.shape != feats.shape[:1]:
            raise ValueError(f'reid_cmc_map: {len(feats)} {split} images but {name} of shape '
                             f'{tuple(values.shape)}: give one per image, in the same order.')


def reid_cmc_map(
        query_feats: torch.Tensor,
        gallery_feats: torch.Tensor,
        query_pids: torch.Tensor,
        gallery_pids: torch.Tensor,
        query_camids: torch.Tensor,
        gallery_camids: torch.Tensor,
        max_rank: int = 50,
        chunk_size: int = 256,
) -> Dict[str, object]:
    """CMC curve and mAP.

    Args:
        query_feats: (Q, D) embeddings (normalised here).
        gallery_feats: (N, D).
        query_pids, query_camids: (Q,) integer identities and cameras.
        gallery_pids, gallery_camids: (N,).
        max_rank: length of the CMC curve (beyond the gallery's size it stays at 1: every valid query's
            first match is within it).
        chunk_size: queries ranked at once.

    Returns:
        dict with 'mAP' (float, 0..1), 'cmc' (list of max_rank floats: cmc[k-1] is Rank-k),
        'num_valid_queries' (int).

    Raises:
        ValueError: shapes that do not fit together (features of another width, or identities or
            cameras not one per image).
    """
    _check_shapes('query', query_feats, query_pids, query_camids)
    _check_shapes('gallery', gallery_feats, gallery_pids, gallery_camids)
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f'reid_cmc_map: query features are {query_feats.shape[1]}-D, gallery features '
                         f'{gallery_feats.shape[1]}-D: embed both with the same model.')
    qf = F.normalize(query_feats.float(), dim=1)
    gf = F.normalize(gallery_feats.float(), dim=1)
    g_pids, g_cams = gallery_pids.to(qf.device), gallery_camids.to(qf.device)
    ap_sum, hits, num_valid = 0., torch.zeros(max_rank, dtype=torch.float64), 0
    for start in range(0, qf.shape[0], chunk_size):
        q = qf[start:start + chunk_size]
        q_pids = query_pids[start:start + chunk_size].to(qf.device)[:, None]
        q_cams = query_camids[start:start + chunk_size].to(qf.device)[:, None]
        dist = torch.cdist(q, gf)  # (c, N)
        order = torch.argsort(dist, dim=1, stable=True)
        pids, cams = g_pids[order], g_cams[order]
        keep = ~(((pids == q_pids) & (cams == q_cams)) | (pids == -1))
        match = (pids == q_pids) & keep
        num_rel = match.sum(dim=1)
        valid = num_rel > 0
        if not valid.any():
            continue
        keep, match, num_rel = keep[valid], match[valid], num_rel[valid]
        kept_rank = torch.cumsum(keep, dim=1)  # 1-based rank among kept images
        # AP: mean over true matches of precision at their rank among kept images
        precision = torch.cumsum(match, dim=1) / kept_rank.clamp(min=1)
        ap_sum += ((precision * match).sum(dim=1) / num_rel).double().sum().item()
        first = torch.argmax(match.int(), dim=1)  # position of the first true match
        first_rank = kept_rank.gather(1, first[:, None]).squeeze(1) - 1  # 0-based
        hits += (first_rank[:, None] < torch.arange(1, max_rank + 1, device=qf.device)).double().sum(0).cpu()
        num_valid += int(valid.sum())
    if num_valid == 0:
        raise ValueError('No query has a true match in the gallery (after the same-camera rule).')
    return {'mAP': ap_sum / num_valid, 'cmc': (hits / num_valid).tolist(), 'num_valid_queries': num_valid}
