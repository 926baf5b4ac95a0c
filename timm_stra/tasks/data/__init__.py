"""Datasets in their published formats; every reader reports bad entries with their path or line."""
from .bad_data import BadDataError, BadDataReport
from .check_share import CheckShare
from .face_bin import FaceBinError, FacePairs, load_face_bin
from .face_folders import scan_identity_folders
from .fer2013 import FER2013_CLASSES, Fer2013, read_fer2013
from .image_list import ImageList, check_images
from .market1501 import Market1501, parse_market_name
