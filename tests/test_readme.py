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


def test_the_ablation_table_is_what_timm_stra_table_prints():
    """Every number of the README's ablation table, the extra rows and ours too (the paper's values have their own
    test): a change of the models or of the counting shows here, not as a stale README."""
    from timm_stra.benchmarks.ablation import measure, to_markdown
    from timm_stra.benchmarks.rows import EXTRA_ROWS, PAPER_ROWS
    table = to_markdown(measure(PAPER_ROWS + EXTRA_ROWS))
    header = table.splitlines()[0]
    text = README.read_text()
    assert header in text, 'the README has no ablation table'
    start = text.index(header)
    written = text[start:text.index('\n\n', start)]
    assert written == table
