"""timm's own model test-suite, run on every model this package registers.

Runs ``tests/test_models.py`` of the installed timm's sdist in a subprocess,
selecting our models, and checks that every one of them went through each of
timm's model checks and that nothing failed.
"""
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from timm_stra.tools.summary import stra_model_names
from timm_suite import timm_test_models_file

# timm test functions every registered model must pass (others may select our models too)
REQUIRED = (
    'test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_torchscript',
    'test_model_forward_features', 'test_model_forward_intermediates_features', 'test_model_forward_intermediates',
    'test_model_forward_fx', 'test_model_backward_fx', 'test_prune_intermediate_layers_contract',
)


@pytest.mark.slow
def test_timm_model_suite_passes_for_every_registered_model(tmp_path):
    models = stra_model_names()
    report = tmp_path / 'report.xml'
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', str(timm_test_models_file()), '-q', '-p', 'no:cacheprovider',
         '-W', 'ignore', '-k', ' or '.join(models), f'--junitxml={report}'],
        capture_output=True, text=True)
    cases = ET.parse(report).getroot().iter('testcase')
    outcome = {}
    for case in cases:
        name = case.get('name')
        match = re.fullmatch(r'(\w+)\[(.*)\]', name)
        params = match.group(2).split('-') if match else []
        model = next((p for p in params if p in models), None)
        if model is None:
            continue  # a timm model whose name contains one of ours
        failed = case.find('failure') is not None or case.find('error') is not None
        skipped = case.find('skipped') is not None
        outcome[(match.group(1), model)] = 'failed' if failed else 'skipped' if skipped else 'passed'
    failures = sorted(k for k, v in outcome.items() if v == 'failed')
    assert not failures, f'timm model tests failed: {failures}\n{proc.stdout[-4000:]}'
    missing = [(t, m) for t in REQUIRED for m in models if outcome.get((t, m)) != 'passed']
    assert not missing, f'not run or skipped: {missing}'
    print(f'{sum(v == "passed" for v in outcome.values())} timm model tests passed for {len(models)} models')
