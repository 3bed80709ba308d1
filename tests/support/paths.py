"""Where things are: the checkout, the test suite, and where tests leave screenshots."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
ARTIFACTS = TESTS / "artifacts"  # screenshots and pages a test saves for a person to look at
