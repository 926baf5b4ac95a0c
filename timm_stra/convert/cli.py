"""``timm-stra convert`` (also ``python -m timm_stra.convert``): the authors' checkpoint -> timm folder."""
import argparse
import sys
from typing import List, Optional

from ..checkpoint_file import CheckpointError
from .release import convert_checkpoint


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='timm-stra convert',
        description="Convert the authors' StRA ReID checkpoint (torchreid .pth.tar) into a folder that "
                    "timm.create_model('local-dir:<out_dir>', pretrained=True) loads and 'hf upload' publishes.")
    parser.add_argument('checkpoint', help="the official checkpoint, e.g. model.pth.tar")
    parser.add_argument('out_dir', help='output folder (must not exist, or be empty); written only when complete')
    parser.add_argument('--keep-classifier', action='store_true',
                        help='keep the ID classifier (751 Market-1501 IDs); default: the 512-D embedding model')
    args = parser.parse_args(argv)
    try:
        out = convert_checkpoint(args.checkpoint, args.out_dir, keep_classifier=args.keep_classifier)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, CheckpointError) as e:
        print(f'timm-stra convert: error: {e}', file=sys.stderr)
        return 1
    except OSError as e:  # e.g. a file system that refuses the folder, a full disk: nothing was left behind
        print(f'timm-stra convert: error: cannot write {args.out_dir}: {e}', file=sys.stderr)
        return 1
    what = 'with the ID classifier' if args.keep_classifier else '512-D embedding'
    print(f"wrote {out} ({what}); load it with timm.create_model('local-dir:{out}', pretrained=True) "
          'after import timm_stra')
    return 0
