"""How a file's state dict fails to fit a model's: the three lists and their message."""
import torch

from timm_stra.state_dict_fit import key_differences


def _model_state():
    return {'conv.weight': torch.zeros(4, 3, 3, 3), 'bn.num_batches_tracked': torch.zeros((), dtype=torch.long),
            'fc.weight': torch.zeros(10, 4)}


def test_a_fitting_file_has_no_differences_and_may_lack_batchnorm_counters():
    ours = _model_state()
    assert not key_differences({'conv.weight': torch.ones(4, 3, 3, 3), 'fc.weight': torch.ones(10, 4)}, ours)


def test_each_kind_of_difference_is_listed_and_described_in_order():
    ours = _model_state()
    file = {'conv.weight': torch.ones(4, 1, 3, 3), 'extra.num_batches_tracked': torch.zeros(()),
            'extra.weight': torch.ones(2)}
    problems = key_differences(file, ours)
    assert problems.unexpected == ['extra.num_batches_tracked', 'extra.weight']
    assert problems.missing == ['fc.weight']
    assert problems.mismatched == ['conv.weight (4, 1, 3, 3) vs (4, 3, 3, 3)']
    assert problems.describe() == (  # weights before BatchNorm counters
        'keys the model does not have: extra.weight, extra.num_batches_tracked; model keys the file lacks: '
        'fc.weight; shapes that differ (file vs model): conv.weight (4, 1, 3, 3) vs (4, 3, 3, 3)')


def test_unchecked_keys_and_accepted_shapes_are_not_differences():
    ours = _model_state()
    file = {'conv.weight': torch.ones(4, 1, 3, 3), 'fc.weight': torch.ones(7, 4), 'fc.bias': torch.ones(7)}
    problems = key_differences(file, ours, checked=lambda k: not k.startswith('fc.'),
                               fits=lambda k, v, target: v.shape[0] == target.shape[0])
    assert not problems, problems.describe()


def test_integer_tensors_for_weights_or_floats_for_integers_differ_but_counters_do_not():
    """load_state_dict copies across kinds without a word: integer weights loaded as whole numbers (zeros)."""
    ours = {**_model_state(), 'index': torch.zeros(3, dtype=torch.long)}
    file = {'conv.weight': torch.ones(4, 3, 3, 3, dtype=torch.int64), 'fc.weight': torch.ones(10, 4).half(),
            'index': torch.zeros(3), 'bn.num_batches_tracked': torch.zeros(())}
    problems = key_differences(file, ours)
    assert problems.other_kind == ['conv.weight int64 vs float32', 'index float32 vs int64']  # half is a float
    assert problems.describe() == ('integer tensors for floating-point ones or back (file vs model): '
                                   'conv.weight int64 vs float32, index float32 vs int64')
