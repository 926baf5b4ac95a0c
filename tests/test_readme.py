"""The README's code examples run as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / 'README.md'


def _python_blocks(section: str):
    text = README.read_text()
    body = text.split(f'## {section}', 1)[1].split('\n## ', 1)[0]
    return re.findall(r'```python\n(.*?)```', body, flags=re.S)


def test_training_step_example_runs():
    (block,) = _python_blocks('Training with the diversity loss')
    namespace = {}
    exec(compile(block, 'README.md', 'exec'), namespace)
    assert namespace['loss'].requires_grad and namespace['loss'].item() > 0


def test_model_examples_run():
    import timm
    import timm_stra
    blocks = _python_blocks('Models')
    assert blocks, 'the Models section has no python example'
    for block in blocks:
        exec(compile(block, 'README.md', 'exec'), {'timm': timm, 'timm_stra': timm_stra})
