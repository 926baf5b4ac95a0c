"""timm's own model test-suite, run on every model this package registers.

Runs ``tests/test_models.py`` of the installed timm's sdist in a subprocess,
selecting our models, and checks that every one of them went through each of
timm's model checks and that nothing failed. timm's pretrained-loading tests
download weights; here they read an offline Hugging Face cache holding random
stand-ins for the ImageNet ResNet-50 files our ``pretrained_cfg``s point at.
"""
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import timm

from hub_cache import add_repo, safetensors_bytes
from timm_stra.tools.summary import stra_model_names
from timm_suite import timm_test_models_file

# timm test functions every registered model must pass (others may select our models too)
REQUIRED = (
    'test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_torchscript',
    'test_model_forward_features', 'test_model_forward_intermediates_features', 'test_model_forward_intermediates',
    'test_model_forward_fx', 'test_model_backward_fx', 'test_prune_intermediate_layers_contract',
)
# and, for every model with ImageNet initialisation
REQUIRED_PRETRAINED = ('test_model_load_pretrained', 'test_model_features_pretrained')


def offline_hub_env(tmp_path) -> dict:
    """Environment for a subprocess: HF_HUB_OFFLINE=1 and a cache with every hub file our cfgs name."""
    cache = tmp_path / 'hub'
    weights = safetensors_bytes(timm.create_model('resnet50').state_dict(), tmp_path / 'resnet50.safetensors')
    hub_ids = {timm.models.get_pretrained_cfg(n).hf_hub_id for n in stra_model_names(pretrained=True)}
    for repo_id in hub_ids:
        add_repo(cache, repo_id, {'model.safetensors': weights})
    return dict(os.environ, HF_HOME=str(tmp_path), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE='1')


@pytest.mark.slow
def test_timm_model_suite_passes_for_every_registered_model(tmp_path):
    models = stra_model_names()
    pretrained = stra_model_names(pretrained=True)
    report = tmp_path / 'report.xml'
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', str(timm_test_models_file()), '-q', '-p', 'no:cacheprovider',
         '-W', 'ignore', '-k', ' or '.join(models), f'--junitxml={report}'],
        capture_output=True, text=True, env=offline_hub_env(tmp_path), timeout=1500)
    outcome = {}  # (timm test, model name as parametrised, possibly with a tag) -> passed/failed/skipped
    for case in ET.parse(report).getroot().iter('testcase'):
        match = re.fullmatch(r'(\w+)\[(.*)\]', case.get('name'))
        if not match:
            continue
        name = next((p for p in match.group(2).split('-') if p.split('.')[0] in models), None)
        if name is None:
            continue  # a timm model whose name contains one of ours
        failed = case.find('failure') is not None or case.find('error') is not None
        skipped = case.find('skipped') is not None
        outcome[(match.group(1), name)] = 'failed' if failed else 'skipped' if skipped else 'passed'
    failures = sorted(k for k, v in outcome.items() if v == 'failed')
    assert not failures, f'timm model tests failed: {failures}\n{proc.stdout[-4000:]}'

    def passed(test, model):
        """The model (under its bare name, or any of its tags) went through the test."""
        return any(v == 'passed' for (t, n), v in outcome.items() if t == test and n.split('.')[0] == model)

    missing = [(t, m) for t in REQUIRED for m in models if not passed(t, m)]
    missing += [(t, m) for t in REQUIRED_PRETRAINED for m in pretrained if outcome.get((t, m)) != 'passed']
    assert not missing, f'not run or skipped: {missing}'
    print(f'{sum(v == "passed" for v in outcome.values())} timm model tests passed for {len(models)} models')
