"""``timm_stra.diversity_loss``: the batch mean of the per-sample sum over all StRA operators."""

import pickle

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.utils.checkpoint
from timm.utils import ModelEmaV3
from torch import nn

import timm_stra
from timm_stra.layers import ModeAttention, StRAttention, mask_diversity


def _expected_per_sample(model, x):
    """Per-sample sum over operators, recomputed from each operator's masks (hooks see the masks)."""
    terms = []
    hooks = [m.diversity.register_forward_hook(lambda mod, inp, out: terms.append(mask_diversity(out)))
             for m in model.modules() if isinstance(m, ModeAttention)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return torch.stack(terms).sum(0)


@pytest.mark.parametrize('batch_size', [1, 3, 17])
def test_any_batch_size(batch_size):
    model = timm.create_model('stra_resnet50_fer', layers=[1, 1, 1, 2]).train()  # (two operators to sum over)
    x = torch.randn(batch_size, 1, 44, 44)
    expected = _expected_per_sample(model, x)
    with torch.no_grad():  # drop what the hook pass kept (computed without gradients)
        timm_stra.diversity_per_sample(model)
    model(x)
    per_sample = timm_stra.diversity_per_sample(model)
    assert per_sample.shape == (batch_size,)
    torch.testing.assert_close(per_sample, expected)
    model(x)
    torch.testing.assert_close(timm_stra.diversity_loss(model), expected.mean())


def test_loss_has_gradient_for_the_mask_branch():
    model = nn.Sequential(StRAttention(32, groups=4)).train()
    model(torch.randn(2, 32, 6, 4))
    timm_stra.diversity_loss(model).backward()
    assert model[0].mode.mask.conv2.weight.grad.abs().sum() > 0
    assert model[0].mode.gate_norm.weight.grad is None  # the term depends on the masks, not the gates


def test_read_clears_and_eval_records_nothing():
    model = nn.Sequential(StRAttention(16, groups=4), StRAttention(16, groups=2))
    model.train()(torch.randn(2, 16, 4, 4))
    timm_stra.diversity_loss(model)
    with pytest.raises(RuntimeError, match='No diversity term recorded'):
        timm_stra.diversity_loss(model)
    model.eval()(torch.randn(2, 16, 4, 4))
    assert all(not m.diversity.kept for m in model.modules() if isinstance(m, ModeAttention))
    with pytest.raises(RuntimeError, match='training-mode forward'):
        timm_stra.diversity_loss(model)


def test_a_second_forward_before_the_read_replaces_the_first_term():
    """As README says: two views read once give the last view's term (read it after each forward)."""
    model = nn.Sequential(StRAttention(16, groups=4)).train()
    xa, xb = torch.randn(2, 16, 4, 4), torch.randn(3, 16, 4, 4)
    model(xa)
    model(xb)
    assert timm_stra.diversity_per_sample(model).shape == (3,)
    expected = _expected_per_sample(model, xb)
    model(xb)
    torch.testing.assert_close(timm_stra.diversity_loss(model), expected.mean())


def test_a_copy_made_before_the_term_is_read_keeps_nothing_and_the_model_keeps_its_term():
    """(deepcopy refused the kept term, a non-leaf tensor: an EMA or SWA copy made between a training step that
    does not read it, as timm's train.py takes, and the next forward failed; so did pickling the model.)"""
    model = timm.create_model('stra_resnet50_fer', layers=[1, 1, 1, 2]).train()
    x = torch.randn(2, 1, 44, 44)
    model(x).sum().backward()
    ema = ModelEmaV3(model, decay=0.5)  # a deepcopy
    unpickled = pickle.loads(pickle.dumps(model))
    for copied in (ema.module, unpickled):
        assert not any(m.diversity.kept for m in copied.modules() if isinstance(m, ModeAttention))
    assert all(m.diversity.kept for m in model.modules() if isinstance(m, ModeAttention))
    assert torch.isfinite(timm_stra.diversity_loss(model))  # the model's own term, read after the copies
    ema.update(model)
    for copied in (ema.module, unpickled):  # each copy records terms of its own
        copied.train()(x)
        assert timm_stra.diversity_per_sample(copied).shape == (2,)


def test_an_operator_left_in_eval_mode_is_named():
    model = nn.Sequential(StRAttention(16, groups=4), StRAttention(16, groups=2)).train()
    model[1].eval()
    model(torch.randn(2, 16, 4, 4))
    with pytest.raises(RuntimeError, match=r'No diversity term recorded by 1\.mode, where the model\'s 1 other StRA '
                                           'operator recorded one: these did not run in training mode'):
        timm_stra.diversity_loss(model)


def test_model_without_mode_attention_gives_zero():
    twin = timm.create_model('resnet50_fer').train()
    twin(torch.randn(2, 1, 44, 44))
    loss = timm_stra.diversity_loss(twin)
    assert loss.item() == 0.0 and loss.dim() == 0


def test_under_torch_compile():
    model = nn.Sequential(StRAttention(16, groups=4), StRAttention(16, groups=4)).train()
    x = torch.randn(3, 16, 5, 4)
    expected = _expected_per_sample(model, x)
    with torch.no_grad():  # drop what the hook pass kept (computed without gradients)
        timm_stra.diversity_per_sample(model)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    compiled(x)
    torch.testing.assert_close(timm_stra.diversity_per_sample(compiled), expected)
    compiled(x)
    timm_stra.diversity_loss(compiled).backward()
    assert model[0].mode.mask.conv2.weight.grad is not None


def test_under_gradient_checkpointing():
    torch.manual_seed(0)
    model = timm.create_model('stra_resnet50_fer', layers=[1, 1, 1, 2]).train()
    x = torch.randn(2, 1, 44, 44)
    results = []
    calls = []
    model.layer4[1].register_forward_pre_hook(lambda module, args: calls.append(1))  # (recomputation stops early)
    for checkpointing in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        calls.clear()
        out = model(x)
        loss = timm_stra.diversity_loss(model)
        (out.square().mean() + loss).backward()
        assert len(calls) == (2 if checkpointing else 1)  # checkpointed: the block ran again in backward
        results.append((loss.detach(), [m.grad.clone() for m in model.layer4.parameters()]))
        # the blocks ran again in backward: that recomputation keeps nothing (no stale term, no graph held)
        with pytest.raises(RuntimeError, match='No diversity term recorded'):
            timm_stra.diversity_per_sample(model)
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed, plain)
    for a, b in zip(checkpointed_grads, plain_grads):
        torch.testing.assert_close(a, b)
    assert model.layer4[0].conv2.mode.mask.conv1.weight.grad.abs().sum() > 0


def test_reentrant_checkpointing_is_refused_not_silently_without_gradients():
    op = StRAttention(16, groups=4).train()
    model = nn.Sequential(op)
    x = torch.randn(2, 16, 5, 4, requires_grad=True)
    torch.utils.checkpoint.checkpoint(op, x, use_reentrant=True)  # its forward runs under no_grad
    with pytest.raises(RuntimeError, match='without gradients.*reentrant'):
        timm_stra.diversity_loss(model)
    with torch.no_grad():  # for logging, it reads
        assert timm_stra.diversity_per_sample(model).shape == (2,)
    op.requires_grad_(False)  # nothing of the operator to train: nothing is lost
    with torch.no_grad():
        model(x)
    assert timm_stra.diversity_loss(model).shape == ()


def _ddp_worker(rank, world_size, init_file, results):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = nn.Sequential(StRAttention(16, groups=4)).train()
    ddp = nn.parallel.DistributedDataParallel(model)
    x = torch.randn(4 * world_size, 16, 4, 4)[rank * 4:(rank + 1) * 4]
    expected = _expected_per_sample(model, x).mean()
    with torch.no_grad():  # drop what the hook pass kept (computed without gradients)
        timm_stra.diversity_per_sample(model)
    out = ddp(x)
    loss = timm_stra.diversity_loss(ddp)
    (out.square().mean() + loss).backward()  # a task loss too, as in training: every parameter is used
    grad = model[0].mode.mask.conv2.weight.grad.clone()
    dist.all_reduce(grad)  # DDP already averaged: every rank holds the same gradient
    mask_grad = model[0].mode.mask.conv2.weight.grad
    results[rank] = (loss.item(), expected.item(), torch.allclose(grad / world_size, mask_grad))
    dist.destroy_process_group()


def test_under_distributed_data_parallel(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, str(tmp_path / 'init'), results), nprocs=2, join=True)
        results = dict(results)
    for rank in (0, 1):
        loss, expected, grads_synced = results[rank]
        assert loss == pytest.approx(expected, abs=1e-6)
        assert grads_synced


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='DataParallel replicates only across 2+ CUDA devices')
def test_under_data_parallel():
    model = nn.Sequential(StRAttention(16, groups=4)).cuda().train()
    x = torch.randn(6, 16, 4, 4, device='cuda')
    expected = _expected_per_sample(model, x)
    with torch.no_grad():  # drop what the hook pass kept (computed without gradients)
        timm_stra.diversity_per_sample(model)
    nn.DataParallel(model)(x)
    torch.testing.assert_close(timm_stra.diversity_per_sample(model), expected, rtol=1e-4, atol=1e-4)


def test_under_timm_fx_feature_extraction():
    """timm's fx route keeps the recorders whole (registered no-trace modules): the traced model records the same
    term, and tracing leaves nothing (an fx Proxy) behind in the model it traced."""
    from timm.models import create_feature_extractor
    model = timm.create_model('stra_resnet50_fer').train()
    x = torch.randn(2, 1, 44, 44)
    expected = _expected_per_sample(model, x)
    with torch.no_grad():  # drop what the hook pass kept (computed without gradients)
        timm_stra.diversity_per_sample(model)
    traced = create_feature_extractor(model, return_nodes=['fc'])
    assert all(not r.kept for r in model.modules() if type(r).__name__ == 'DiversityRecorder')
    traced(x)
    torch.testing.assert_close(timm_stra.diversity_per_sample(traced), expected)
    features = timm.create_model('stra_resnet50_fer', features_only=True, feature_cls='fx').train()
    features(x)
    assert timm_stra.diversity_per_sample(features).shape == (2,)


def test_torchscript_model_is_refused_not_silently_zero():
    model = torch.jit.script(nn.Sequential(StRAttention(16, groups=4)).train())
    model(torch.randn(2, 16, 5, 4))
    with pytest.raises(RuntimeError, match='cannot read a TorchScript model'):
        timm_stra.diversity_loss(model)


def test_term_of_half_precision_masks_is_summed_in_float32():
    """Under autocast the masks may be bfloat16: the term is summed in float32 (a bfloat16 sum of many positions
    is off by about 1%), and returned as float32."""
    gen = torch.Generator().manual_seed(0)
    masks = torch.randn(2, 8, 16, 16, generator=gen).flatten(2).softmax(-1).view(2, 8, 16, 16).bfloat16()
    term = mask_diversity(masks)
    assert term.dtype == torch.float32
    exact = 8 - masks.double().flatten(2).amax(dim=1).sum(dim=-1)
    torch.testing.assert_close(term.double(), exact, rtol=0, atol=1e-5)
