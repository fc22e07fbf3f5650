import os
import sys

# The tests import helpers from this folder (tests/_models.py).
sys.path.insert(0, os.path.dirname(__file__))
